r"""MRI contrast shift: the image of another TE, TR, TI or flip angle, remapped from the tissue signals.

A synthetic MR image is a sum over tissues of partial-volume fraction times tissue signal. Changing one
sequence parameter changes every tissue's signal by its own factor (the signal equations of
:mod:`phantoms.mri_signal`, after Bernstein, King & Zhou, *Handbook of MRI Pulse Sequences*, 2004, and
Haacke et al., *Magnetic Resonance Imaging: Physical Principles and Sequence Design*, 1999):

* spin echo ``SE``: ``S = PD (1 - E1) exp(-TE / T2)``, ``E1 = exp(-TR / T1)``;
* spoiled gradient echo ``GRE``: ``S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE / T2*)``;
* inversion recovery ``IR``: ``S = PD |1 - 2 exp(-TI / T1) + E1| exp(-TE / T2)``.

``apply`` sees the image only, not the tissue maps, so the shift is an intensity **remap**. For each case
the signals ``s_k`` (nominal protocol) and ``s'_k`` (shifted protocol) of every tissue of
:func:`phantoms.mri_signal.tissue_table` at the spec's field strength are computed on the host from the
recorded params; the knots ``(0, 0)`` (air) and ``(s_k, s'_k)``, sorted by the nominal signal, define a
piecewise-linear map ``f`` with ``f(s_k) = s'_k``, applied voxel-wise on the device
(:func:`torch.searchsorted`, then a gather of the segment's knot, residual and slope). Above the
brightest tissue ``f`` is its ray through the origin, ``f(v) = v s'_K / s_K``; negative values (not an MR
magnitude, but the real part of a signed image) take the odd extension ``f(-v) = -f(v)``, which stays
bounded even where the darkest tissue (cortical bone) has almost no signal.

Exactness: ``f`` is exact for voxels of one pure tissue and for partial-volume mixtures of two tissues
that are adjacent in nominal signal (no tissue in between; air is the darkest tissue's neighbour); any
other mixture is mapped as if it were a mixture of the two knots around its value (e.g. scalp fat with
air, or bone with fat: cortical bone has almost no signal). The shifted values need not be
monotone: when the shift swaps two tissues (e.g. gray and white matter when TR grows on a T1-weighted
scan) the map goes down between their knots. Tissues whose nominal signals are equal to 1e-6 relative
share one knot at their mean shifted signal (the map cannot tell them apart); a tissue with exactly zero
nominal signal cannot be told from air and keeps 0. The map is built for the spec's field strength and
protocol; a case acquired otherwise is remapped with the wrong table. Noise, bias fields and k-space
artefacts would be remapped too: put this perturbation first in a chain (in a scenario, list it in the
``baseline`` before ``mri_rician_noise``, so that a sweep replaces it in place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from perturbations import base
from perturbations.mri_common import EXACT_AT_NOMINAL, physical_severity, register
from phantoms.mri_signal import FIELD_STRENGTHS, Acquisition, MRSequenceSpec, signal, tissue_table

Parameter = Literal["te_ms", "tr_ms", "ti_ms", "flip_deg"]
FieldStrength = Literal["1.5T", "3T"]
TIE = 1e-6
"""Relative difference of nominal signals below which two tissues share one knot."""

RELATIVE_CHANGE = physical_severity(
    ("relative_change", "percent of the nominal value of the spec's parameter (signed)"),
    (-100.0, 1000.0, 0.0, "higher"),
    low_inclusive=False,
)


class MRIContrastShiftSpec(MRSequenceSpec, base.PerturbationSpec):
    """Fixed settings of ``mri_contrast_shift``: the phantom's protocol and the parameter that changes.

    The sequence fields (``sequence``, ``family``, ``tr_ms``, ``te_ms``, ``ti_ms``, ``flip_deg``) are
    :class:`phantoms.mri_signal.MRSequenceSpec`'s and must repeat the phantom section of the scenario.

    Attributes:
        field_strength: the tissue table of the images, ``"1.5T"`` or ``"3T"`` (pin the population's
            ``field_strength`` to it).
        parameter: the sequence parameter the severity changes: ``te_ms`` (echo time, ms), ``tr_ms``
            (repetition time, ms), ``ti_ms`` (inversion time, ms; family IR only) or ``flip_deg``
            (excitation flip angle, degrees; family GRE only).
    """

    field_strength: FieldStrength = Field("3T", description="tissue table of the images (B0)")
    parameter: Parameter = Field("te_ms", description="sequence parameter changed by the severity")

    @model_validator(mode="after")
    def _parameter_used(self) -> MRIContrastShiftSpec:
        family = self.acquisition(self.field_strength).family
        needs = {"ti_ms": "IR", "flip_deg": "GRE"}.get(self.parameter)
        if needs is not None and family != needs:
            raise ValueError(
                f"parameter is not used by family {family} (expected family {needs} for "
                f"{self.parameter}, got parameter {self.parameter!r})"
            )
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class MRIContrastShiftParams:
    """One case's contrast shift: the nominal protocol and the changed parameter's new value.

    Attributes:
        relative_change: the severity, percent of the nominal value of ``parameter``.
        parameter: ``te_ms``, ``tr_ms``, ``ti_ms`` or ``flip_deg``.
        shifted_value: the parameter's value in the shifted protocol (ms or degrees).
        field_strength: tissue table, ``"1.5T"`` or ``"3T"``.
        sequence: weighting of the nominal protocol (``T1w``, ``T2w``, ``PDw``, ``FLAIR``).
        family: signal equation, ``SE``, ``GRE`` or ``IR``.
        tr_ms: nominal repetition time, ms.
        te_ms: nominal echo time, ms.
        ti_ms: nominal inversion time, ms (``None`` unless family IR).
        flip_deg: nominal flip angle, degrees.
    """

    relative_change: float
    parameter: str
    shifted_value: float
    field_strength: str
    sequence: str
    family: str
    tr_ms: float
    te_ms: float
    ti_ms: float | None
    flip_deg: float


def acquisitions(p: MRIContrastShiftParams) -> tuple[Acquisition, Acquisition]:
    """The nominal and the shifted :class:`~phantoms.mri_signal.Acquisition` of a case."""
    nominal = Acquisition(
        FIELD_STRENGTHS[p.field_strength], p.sequence, p.family, p.tr_ms, p.te_ms, p.ti_ms, p.flip_deg
    )
    return nominal, replace(nominal, **{p.parameter: p.shifted_value})


def contrast_knots(p: MRIContrastShiftParams) -> tuple[list[float], list[float]]:
    """Knots ``(nominal signal, shifted signal)`` of a case's map, air first, sorted by nominal signal.

    Tissues whose nominal signals differ by at most :data:`TIE` (relative) share one knot at their mean
    signals; a tissue of zero nominal signal is dropped (air keeps ``(0, 0)``). Signals are fractions of
    the fully relaxed magnetisation of pure water.
    """
    nominal, shifted = acquisitions(p)
    pairs = sorted((signal(t, nominal), signal(t, shifted)) for t in tissue_table(p.field_strength).values())
    xs, ys, counts = [0.0], [0.0], [1]
    for s, s_new in pairs:
        if s - xs[-1] > TIE * s:
            xs.append(s)
            ys.append(s_new)
            counts.append(1)
        elif len(xs) > 1:  # a tie: running mean of the tissues on this knot
            n = counts[-1] = counts[-1] + 1
            xs[-1] += (s - xs[-1]) / n
            ys[-1] += (s_new - ys[-1]) / n
    return xs, ys


def segment_table(params: Sequence[MRIContrastShiftParams], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-case knots, residuals and slopes of the maps, on ``like``'s device.

    On segment ``k`` (from knot ``k`` to ``k + 1``; the last one is the ray through the origin beyond the
    brightest tissue) the residual map is ``f(v) - v = d_k + b_k (v - x_k)``.

    Returns:
        ``(x, d, b)``, each ``(B, K)``: knots ``x_k`` (ascending nominal signals, air first), residuals
        ``d_k = f(x_k) - x_k`` and slopes ``b_k``, computed in float64 on the host from the params only and
        cast to the working dtype (``like``'s, at least float32). A case with fewer knots repeats its last
        knot and ray.
    """
    rows = []
    for p in params:
        xs, ys = contrast_knots(p)
        if len(xs) == 1:  # no tissue with signal: nothing to map
            xs, ys = [0.0, 1.0], [0.0, 1.0]
        x, d = np.asarray(xs), np.asarray(ys) - np.asarray(xs)
        rows.append((x, d, np.append(np.diff(d) / np.diff(x), d[-1] / x[-1])))
    width = max(len(r[0]) for r in rows)
    dtype = torch.promote_types(like.dtype, torch.float32)
    x, d, b = (
        torch.tensor(
            np.stack([np.pad(r[i], (0, width - len(r[i])), mode="edge") for r in rows]),
            dtype=torch.float64,
            device=like.device,
        ).to(dtype)
        for i in range(3)
    )
    return x, d, b


def sample_mri_contrast_shift(
    spec: MRIContrastShiftSpec, severity: float, rng: np.random.Generator
) -> MRIContrastShiftParams:
    """The protocol of the spec with ``spec.parameter`` scaled by ``1 + severity / 100``; draws nothing.

    Raises:
        ValueError: the shifted protocol is invalid (e.g. ``te_ms >= tr_ms``, a flip angle above 180
            degrees, a value outside :class:`~phantoms.mri_signal.MRSequenceSpec`'s ranges).
    """
    nominal = spec.acquisition(spec.field_strength)
    value = float(getattr(nominal, spec.parameter)) * (1.0 + severity / 100.0)
    protocol = {
        "sequence": nominal.sequence,
        "family": nominal.family,
        "tr_ms": nominal.tr_ms,
        "te_ms": nominal.te_ms,
        "ti_ms": nominal.ti_ms,
        "flip_deg": nominal.flip_deg,
    }
    MRSequenceSpec(**{**protocol, spec.parameter: value})  # validates the shifted protocol
    return MRIContrastShiftParams(
        relative_change=float(severity),
        parameter=spec.parameter,
        shifted_value=value,
        field_strength=spec.field_strength,
        **protocol,
    )


def apply_mri_contrast_shift(
    x: Tensor, spacing_mm: base.Spacing, params: Sequence[MRIContrastShiftParams]
) -> Tensor:
    """Remap each case's intensities from its nominal to its shifted protocol: ``x + (f(x) - x)``.

    The residual ``f(v) - v`` of the piecewise-linear map is evaluated per voxel as
    ``sign(v) (d_k + b_k (|v| - x_k))`` on the segment ``k`` that holds ``|v|`` (one batched
    ``searchsorted`` over each case's knots, which start at 0, and three gathers), in ``x``'s dtype (at
    least float32): a pure-tissue voxel, ``v = x_k``, gets ``d_k`` to rounding. At relative change 0 every
    residual is exactly 0 and the input comes back bit for bit. Channels of a case share its map.

    Shape:
        x: ``(B, C, D, H, W)`` noiseless MR signal in units of the fully relaxed magnetisation of pure
        water (:func:`phantoms.mri_signal.signal`); returns the same shape, dtype and device.
    """
    base.check_batch(x, params, "mri_contrast_shift")
    knots, d, b = segment_table(params, x)
    v = x.reshape(x.shape[0], -1).to(knots.dtype)
    magnitude = v.abs()
    k = torch.searchsorted(knots, magnitude, right=True) - 1
    residual = (d.gather(1, k) + b.gather(1, k) * (magnitude - knots.gather(1, k))) * v.sign()
    return x + residual.view_as(x).to(x.dtype)


SEQUENCE_FIELDS = ("sequence", "family", "tr_ms", "te_ms", "ti_ms", "flip_deg")


def phantom_mismatch(spec: MRIContrastShiftSpec, generator: str, phantom: Any, population: Any) -> str | None:
    """Why ``spec`` cannot remap this scenario's images, or ``None``.

    The remap is exact only for images made with the protocol and tissue table the spec names: the
    phantom must be an MR generator with the same sequence settings, and every case must be drawn at
    the spec's field strength.
    """
    if not isinstance(phantom, MRSequenceSpec):
        return f"needs an MR phantom with tissue signals (expected e.g. brain_mri, got {generator})"
    ours = {k: getattr(spec, k) for k in SEQUENCE_FIELDS}
    theirs = {k: getattr(phantom, k) for k in SEQUENCE_FIELDS}
    if ours != theirs:
        diff = ", ".join(
            f"{k} {ours[k]!r} here, {theirs[k]!r} there" for k in SEQUENCE_FIELDS if ours[k] != theirs[k]
        )
        return (
            f"params repeat the phantom's protocol (expected the phantom section's settings; differ: {diff})"
        )
    drawn = population.attributes.get("field_strength")
    if drawn is None or {k for k, p in drawn.items() if p > 0} != {spec.field_strength}:
        return (
            f"params.field_strength is {spec.field_strength}, but the population draws "
            f"{dict(drawn) if drawn else 'every field strength'} (expected population.attributes."
            f"field_strength: {{{spec.field_strength}: 1.0}})"
        )
    return None


register(
    (
        "mri_contrast_shift",
        "MRI contrast shift: tissue signals remapped to a protocol with TE, TR, TI or flip changed",
    ),
    (MRIContrastShiftSpec, MRIContrastShiftParams, sample_mri_contrast_shift, apply_mri_contrast_shift),
    (RELATIVE_CHANGE, (10.0, 25.0, 50.0, 100.0, 200.0), EXACT_AT_NOMINAL),
    check_phantom=phantom_mismatch,
)
