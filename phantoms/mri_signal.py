"""MR tissue parameters per field strength, default sequence protocols and the signal equations.

Signals are in units of the fully relaxed magnetisation of pure water (a voxel of proton density 1 with
TR -> inf, TE -> 0 and a 90 degree excitation gives 1), so every signal lies in [0, 1]. The equations
(ideal spoiling, instantaneous pulses, mono-exponential relaxation, no noise, no coil sensitivity):

* spin echo (``SE``): ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``
* spoiled gradient echo (``GRE``): ``S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*)``,
  ``E1 = exp(-TR/T1)``
* inversion recovery with a spin-echo read-out (``IR``, e.g. FLAIR):
  ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``

Tissue values and their sources are tabulated in docs/phantoms-brain-mri.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from pydantic import field_validator, model_validator

from phantoms.base import PhantomSpec

FIELD_STRENGTHS = {"1.5T": 1.5, "3T": 3.0}  # population level -> B0 in tesla
GAMMA_MHZ_PER_T = 42.577478  # proton gyromagnetic ratio / 2 pi (CODATA 2018), MHz/T
SEQUENCES = ("T1w", "T2w", "FLAIR", "PDw")
FAMILIES = ("SE", "GRE", "IR")


@dataclass(frozen=True, slots=True)
class Tissue:
    """Relaxation parameters of one tissue at one field strength.

    Attributes:
        t1: longitudinal relaxation time T1, ms.
        t2: transverse relaxation time T2, ms.
        t2s: effective transverse relaxation time T2*, ms.
        pd: proton density relative to pure water (MR-visible water fraction).
    """

    t1: float
    t2: float
    t2s: float
    pd: float


# Sources per value: docs/phantoms-brain-mri.md (Rooney 2007, Wansapura 1999, Stanisz 2005, Peters 2007,
# Lu 2005, Piechnik 2009, Gold 2004, Ernst 1993); values marked "assumed" there are modelling choices.
TISSUES: dict[str, dict[str, Tissue]] = {
    "1.5T": {
        "white_matter": Tissue(656.0, 72.0, 66.2, 0.65),
        "gray_matter": Tissue(1188.0, 95.0, 84.0, 0.78),
        "csf": Tissue(4329.0, 503.0, 400.0, 0.97),
        "fat": Tissue(343.0, 58.0, 35.0, 0.90),
        "marrow": Tissue(549.0, 49.0, 20.0, 0.80),
        "cortical_bone": Tissue(250.0, 0.5, 0.4, 0.20),
    },
    "3T": {
        "white_matter": Tissue(832.0, 69.0, 53.2, 0.65),
        "gray_matter": Tissue(1331.0, 99.0, 66.0, 0.78),
        "csf": Tissue(3817.0, 503.0, 300.0, 0.97),
        "fat": Tissue(382.0, 68.0, 30.0, 0.90),
        "marrow": Tissue(586.0, 49.0, 15.0, 0.80),
        "cortical_bone": Tissue(300.0, 0.5, 0.4, 0.20),
    },
}
# Lesions relative to the white matter of the same field strength: (T1, T2, T2*) factors and PD.
LESION_FACTORS: dict[str, tuple[float, float, float, float]] = {
    "wmh": (1.5, 1.9, 1.6, 0.78),
    "tumour_core": (1.8, 1.6, 1.4, 0.82),
    "oedema": (2.0, 2.6, 2.0, 0.88),
}
# Default protocol per (weighting, family): TR ms, TE ms, TI ms (IR only), flip angle degrees.
PROTOCOLS: dict[tuple[str, str], tuple[float, float, float | None, float]] = {
    ("T1w", "SE"): (500.0, 12.0, None, 90.0),
    ("T1w", "GRE"): (20.0, 4.0, None, 25.0),
    ("T1w", "IR"): (2000.0, 10.0, 800.0, 90.0),
    ("T2w", "SE"): (4000.0, 100.0, None, 90.0),
    ("T2w", "GRE"): (600.0, 20.0, None, 20.0),
    ("PDw", "SE"): (3000.0, 15.0, None, 90.0),
    ("PDw", "GRE"): (500.0, 5.0, None, 15.0),
    ("FLAIR", "IR"): (9000.0, 120.0, 2400.0, 90.0),
}
DEFAULT_FAMILY = {"T1w": "SE", "T2w": "SE", "PDw": "SE", "FLAIR": "IR"}


def tissue_table(field_strength: str) -> dict[str, Tissue]:
    """All tissue parameters at ``field_strength`` (``"1.5T"`` or ``"3T"``), lesions and deep GM included.

    Deep gray matter (thalamus, basal ganglia) takes the mean of the white and gray matter T1 and PD and
    the white matter T2 and T2* (iron shortens T2 in the basal ganglia); the ventricles hold CSF; the
    scalp is fat; lesions follow :data:`LESION_FACTORS`.
    """
    base = TISSUES[field_strength]
    wm, gm = base["white_matter"], base["gray_matter"]
    table = dict(base)
    table["deep_gray_matter"] = Tissue((wm.t1 + gm.t1) / 2, wm.t2, wm.t2s, (wm.pd + gm.pd) / 2)
    for name, (f1, f2, f2s, pd) in LESION_FACTORS.items():
        table[name] = replace(wm, t1=wm.t1 * f1, t2=wm.t2 * f2, t2s=wm.t2s * f2s, pd=pd)
    return table


@dataclass(frozen=True, slots=True)
class Acquisition:
    """Sequence settings of one simulated series.

    Attributes:
        field_strength_t: B0, tesla.
        sequence: weighting, one of :data:`SEQUENCES`.
        family: signal equation, one of :data:`FAMILIES`.
        tr_ms: repetition time, ms.
        te_ms: echo time, ms.
        ti_ms: inversion time, ms (``None`` unless ``family == "IR"``).
        flip_deg: excitation flip angle, degrees (90 for SE and IR).
    """

    field_strength_t: float
    sequence: str
    family: str
    tr_ms: float
    te_ms: float
    ti_ms: float | None
    flip_deg: float

    def record(self) -> dict[str, Any]:
        """Plain dict for ``CaseBatch.acquisition`` and exports."""
        return {
            "field_strength_t": self.field_strength_t,
            "sequence": self.sequence,
            "family": self.family,
            "tr_ms": self.tr_ms,
            "te_ms": self.te_ms,
            "ti_ms": self.ti_ms,
            "flip_deg": self.flip_deg,
        }


def resolve_protocol(
    sequence: str,
    family: str | None = None,
    tr_ms: float | None = None,
    te_ms: float | None = None,
    ti_ms: float | None = None,
    flip_deg: float | None = None,
) -> tuple[str, float, float, float | None, float]:
    """Family, TR, TE, TI and flip angle: the defaults of :data:`PROTOCOLS` with the given overrides.

    Raises:
        ValueError: unknown weighting or family, a combination without a protocol, inconsistent timing.
    """
    if sequence not in SEQUENCES:
        raise ValueError(
            f"sequence is not supported (expected one of {', '.join(SEQUENCES)}, got {sequence!r})"
        )
    family = family or DEFAULT_FAMILY[sequence]
    allowed = [f for s, f in PROTOCOLS if s == sequence]
    if (sequence, family) not in PROTOCOLS:
        raise ValueError(
            f"family is not available for sequence {sequence} (expected one of {', '.join(allowed)}, "
            f"got {family!r})"
        )
    tr0, te0, ti0, flip0 = PROTOCOLS[(sequence, family)]
    if ti_ms is not None and family != "IR":
        raise ValueError(
            f"ti_ms is only used by family IR (expected no ti_ms for family {family}, got {ti_ms})"
        )
    tr, te = tr_ms if tr_ms is not None else tr0, te_ms if te_ms is not None else te0
    ti = ti_ms if ti_ms is not None else ti0
    flip = flip_deg if flip_deg is not None else flip0
    if family != "GRE" and flip != 90.0:
        raise ValueError(f"flip_deg is out of range (expected 90 for family {family}, got {flip})")
    if not te < tr:
        raise ValueError(f"te_ms is out of range (expected te_ms < tr_ms = {tr:g} ms, got {te:g})")
    if ti is not None and not ti < tr:
        raise ValueError(f"ti_ms is out of range (expected ti_ms < tr_ms = {tr:g} ms, got {ti:g})")
    return family, tr, te, ti, flip


def signal(t: Tissue, acq: Acquisition) -> float:
    """Noiseless signal of a voxel filled with tissue ``t`` (fraction of pure-water magnetisation)."""
    e1 = math.exp(-acq.tr_ms / t.t1)
    if acq.family == "SE":
        return t.pd * (1.0 - e1) * math.exp(-acq.te_ms / t.t2)
    if acq.family == "GRE":
        a = math.radians(acq.flip_deg)
        return t.pd * math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1) * math.exp(-acq.te_ms / t.t2s)
    if acq.family == "IR":
        recovery = 1.0 - 2.0 * math.exp(-float(acq.ti_ms) / t.t1) + e1
        return t.pd * abs(recovery) * math.exp(-acq.te_ms / t.t2)
    raise ValueError(f"family is not supported (expected one of {', '.join(FAMILIES)}, got {acq.family!r})")


_RANGES = {
    "tr_ms": (1.0, 20000.0),
    "te_ms": (0.5, 1000.0),
    "ti_ms": (10.0, 10000.0),
    "flip_deg": (1.0, 180.0),
}


class MRSequenceSpec(PhantomSpec):
    """Sequence settings shared by MR generators: weighting, equation family and optional overrides.

    Attributes:
        sequence: weighting, one of :data:`SEQUENCES`; picks the default protocol.
        family: signal equation ``SE``, ``GRE`` or ``IR``; default: ``SE`` for T1w, T2w and PDw, ``IR`` for
            FLAIR. The (sequence, family) pair must have a protocol in :data:`PROTOCOLS`.
        tr_ms: repetition time override, ms.
        te_ms: echo time override, ms.
        ti_ms: inversion time override, ms (family IR only).
        flip_deg: flip angle override, degrees (family GRE only; SE and IR use 90).
    """

    sequence: str = "T1w"
    family: str | None = None
    tr_ms: float | None = None
    te_ms: float | None = None
    ti_ms: float | None = None
    flip_deg: float | None = None

    @field_validator("tr_ms", "te_ms", "ti_ms", "flip_deg")
    @classmethod
    def _in_range(cls, v: float | None, info: Any) -> float | None:
        lo, hi = _RANGES[info.field_name]
        if v is not None and not lo <= v <= hi:
            raise ValueError(
                f"{info.field_name} is out of range (expected a value in [{lo:g}, {hi:g}], got {v})"
            )
        return v

    @field_validator("sequence")
    @classmethod
    def _sequence(cls, v: str) -> str:
        if v not in SEQUENCES:
            raise ValueError(f"sequence is not supported (expected one of {', '.join(SEQUENCES)}, got {v!r})")
        return v

    @field_validator("family")
    @classmethod
    def _family(cls, v: str | None) -> str | None:
        if v is not None and v not in FAMILIES:
            raise ValueError(f"family is not supported (expected one of {', '.join(FAMILIES)}, got {v!r})")
        return v

    @model_validator(mode="after")
    def _protocol(self) -> MRSequenceSpec:
        resolve_protocol(self.sequence, self.family, self.tr_ms, self.te_ms, self.ti_ms, self.flip_deg)
        return self

    def acquisition(self, field_strength: str) -> Acquisition:
        """The protocol at ``field_strength`` (a :data:`FIELD_STRENGTHS` level)."""
        family, tr, te, ti, flip = resolve_protocol(
            self.sequence, self.family, self.tr_ms, self.te_ms, self.ti_ms, self.flip_deg
        )
        return Acquisition(FIELD_STRENGTHS[field_strength], self.sequence, family, tr, te, ti, flip)
