"""The scenario schema: typed, validated, frozen pydantic models. Unknown keys are errors.

Names (phantom generator, perturbation, metric, model adapter) are checked against the closed
registries in a second pass (:mod:`stress.scenario.loader`), which also validates each entry's
``params`` against the spec of the registered entry it names.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from phantoms.population import PopulationSpec
from stress.scenario.preprocess import PreprocessStep


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PhantomSection(_Model):
    """Which generator makes the cases, how many, and with which settings (see ``stress list phantoms``)."""

    generator: str
    n_cases: int = Field(ge=2, le=1_000_000)
    params: dict[str, Any] = Field(default_factory=dict)


class BaselineStep(_Model):
    """A perturbation applied to every case at a fixed severity before the swept one."""

    name: str
    severity: float
    params: dict[str, Any] = Field(default_factory=dict)


def _distinct(v: list[float]) -> list[float]:
    if len(set(v)) != len(v):
        raise ValueError(f"severities repeat a value (expected distinct values, got {v})")
    return v


class GridAxis(_Model):
    """The second family of a two-family grid sweep: every severity pair of the two is evaluated."""

    name: str
    severities: list[float] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    _unique = field_validator("severities")(_distinct)


class PerturbationSweep(_Model):
    """One perturbation swept over severities in its physical unit (see ``stress list perturbations``).

    With ``grid``, the sweep is two-dimensional: every severity of ``name`` combined with every
    severity of ``grid.name`` (both applied in one chain, ``name`` first).
    """

    name: str
    severities: list[float] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    grid: GridAxis | None = None

    _unique = field_validator("severities")(_distinct)

    @model_validator(mode="after")
    def _two_families(self) -> PerturbationSweep:
        if self.grid is not None and self.grid.name == self.name:
            raise ValueError(
                f"grid.name '{self.name}' repeats the sweep's own perturbation "
                "(expected a second, different perturbation)"
            )
        return self

    @property
    def sweep_id(self) -> str:
        """``name`` for a 1-D sweep, ``"name x grid.name"`` for a grid."""
        return self.name if self.grid is None else f"{self.name} x {self.grid.name}"

    @property
    def n_points(self) -> int:
        """Number of severity points (pairs for a grid)."""
        return len(self.severities) * (1 if self.grid is None else len(self.grid.severities))


ADAPTER_KEYS = ("python", "torchscript", "onnx", "monai_bundle", "command")


class CommandIO(_Model):
    """How a black-box ``command`` model exchanges cases: files in, files out, within a time limit.

    Attributes:
        input_format: what the case is written as: ``nifti`` (one ``.nii.gz``) or ``dicom`` (a series).
        output_format: what the command writes: ``json`` (``{"probability": p}``), ``nifti`` (a mask or
            probability map) or ``dicom_seg``.
        timeout_s: wall-clock limit per call, seconds; a call that runs longer fails its cases.
        batch: cases per call (1: one process per case).
    """

    input_format: Literal["nifti", "dicom"] = "nifti"
    output_format: Literal["json", "nifti", "dicom_seg"] = "json"
    timeout_s: float = Field(60.0, gt=0.0, le=86_400.0)
    batch: int = Field(1, ge=1, le=4096)


class _Derive(_Model):
    """What every ``derive:`` entry has: ``from``, the name of the model it starts from, and ``update``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: str = Field(alias="from", pattern=r"^[A-Za-z0-9_.\-]+$")

    def settings(self) -> dict[str, Any]:
        """The update's own settings (everything but ``from`` and ``update``), JSON-ready."""
        return self.model_dump(mode="json", by_alias=True, exclude={"source", "update"})


class DeriveInt8(_Derive):
    """Weight-only int8: each conv/linear weight rounded to int8 with one float32 scale per output channel."""

    update: Literal["quantize_int8"]


class DerivePrune(_Derive):
    """L1 magnitude pruning: the ``amount`` smallest conv/linear weights zeroed, per layer or globally."""

    update: Literal["prune"]
    amount: float = Field(gt=0.0, lt=1.0)
    scope: Literal["layer", "global"] = "layer"


class DeriveWeightNoise(_Derive):
    """Gaussian weight noise: each conv/linear weight tensor += N(0, (std * rms(weight))^2), seeded."""

    update: Literal["weight_noise"]
    std: float = Field(gt=0.0, le=10.0)
    seed: int = Field(0, ge=0, lt=2**63)


class DeriveThresholdShift(_Derive):
    """The source model unchanged, its decision threshold moved by ``delta``."""

    update: Literal["threshold_shift"]
    delta: float = Field(ge=-1.0, le=1.0)


class DeriveTemperature(_Derive):
    """A calibration shift: ``p' = sigmoid(logit(p) / temperature + logit_shift)``."""

    update: Literal["temperature"]
    temperature: float = Field(gt=0.0, le=1000.0)
    logit_shift: float = Field(0.0, ge=-50.0, le=50.0)


class FineTuneShift(_Model):
    """The perturbation of the fine-tuning cases (after the baseline, replacing a step of the same name)."""

    name: str
    severity: float
    params: dict[str, Any] = Field(default_factory=dict)


class DeriveFineTune(_Derive):
    """Adam on the binary cross-entropy of the model's probabilities, ``steps`` batches of fresh phantoms."""

    update: Literal["fine_tune"]
    steps: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(4, ge=1, le=256)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, lt=2**63)
    shift: FineTuneShift | None = None


_DERIVE_CLASSES = (
    DeriveInt8,
    DerivePrune,
    DeriveWeightNoise,
    DeriveThresholdShift,
    DeriveTemperature,
    DeriveFineTune,
)
DeriveSpec = Annotated[Union[_DERIVE_CLASSES], Field(discriminator="update")]  # noqa: UP007
# update name -> its class, e.g. "prune" -> DerivePrune
DERIVE_UPDATES: dict[str, type[_Derive]] = {
    c.model_fields["update"].annotation.__args__[0]: c
    for c in _DERIVE_CLASSES  # type: ignore[union-attr]
}
# Updates that change weights: they need a source whose weights we hold (a python torch.nn.Module).
WEIGHT_UPDATES = ("quantize_int8", "prune", "weight_noise", "fine_tune")


class ModelSection(_Model):
    """A model under test. Exactly one adapter key names how to load it, or ``derive`` makes it from another.

    Adapter keys: ``python: pkg.mod:factory``, ``torchscript: file.pt``, ``onnx: file.onnx``,
    ``monai_bundle: dir`` or ``command: "exe {input} {output}"`` (a black box; see :class:`CommandIO`).
    Relative paths are resolved against the scenario file's folder. ``derive: {from: name, update: ...}``
    is a simulated update of a model listed earlier (see docs/model-updates.md); a derived model keeps its
    source's threshold unless it sets its own.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    role: Literal["reference", "candidate"]
    python: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    torchscript: str | None = Field(None, min_length=1)
    onnx: str | None = Field(None, min_length=1)
    monai_bundle: str | None = Field(None, min_length=1)
    command: str | None = Field(None, min_length=1)
    command_io: CommandIO = Field(default_factory=CommandIO)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    derive: DeriveSpec | None = None
    preprocess: list[PreprocessStep] = Field(default_factory=list)
    amp: bool = False

    @model_validator(mode="after")
    def _one_adapter(self) -> ModelSection:
        given = [k for k in (*ADAPTER_KEYS, "derive") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a model needs exactly one adapter key or derive, got {given or 'none'} (expected one of "
                f"{', '.join(ADAPTER_KEYS)}, derive; e.g. python: 'module:factory')"
            )
        if self.derive is not None:
            extra = sorted({"kwargs", "command_io", "preprocess", "amp"} & self.model_fields_set)
            if extra:
                raise ValueError(
                    f"{' and '.join(extra)} cannot be given for a derived model (it is made from "
                    f"'{self.derive.source}' and keeps its preprocess and amp; expected only name, role, "
                    "threshold and derive)"
                )
            if self.derive.update == "threshold_shift" and "threshold" in self.model_fields_set:
                raise ValueError(
                    "threshold and derive.update 'threshold_shift' both set the threshold "
                    "(expected one of them: the shift is added to the source's threshold)"
                )
        return self

    @property
    def adapter(self) -> tuple[str, str]:
        """``(adapter name, target)``, e.g. ``("python", "stress.models.demo:reference")``.

        A derived model gives ``("derive", source name)``.
        """
        if self.derive is not None:
            return "derive", self.derive.source
        key = next(k for k in ADAPTER_KEYS if getattr(self, k) is not None)
        return key, str(getattr(self, key))


class BootstrapSection(_Model):
    """Bootstrap settings: percentile CIs from resampling cases, paired across models and severities."""

    n_resamples: int = Field(1000, ge=100, le=100_000)
    level: float = Field(0.95, gt=0.5, lt=1.0)


class StatisticsSection(_Model):
    """Which subgroup attributes to break results down by, and bootstrap settings."""

    subgroups: list[str] = Field(default_factory=list)
    bootstrap: BootstrapSection = Field(default_factory=BootstrapSection)


class GateCriterion(_Model):
    """A pre-specified acceptance criterion (see docs/scenario-reference.md for the rule grammar)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    rule: str
    statistic: Literal["estimate", "ci_low", "ci_high"] = "ci_low"
    models: list[str] | None = None
    description: str = ""


class ExecutionSection(_Model):
    """How the run is cut into work: cases per device batch and cases per stored chunk."""

    batch_size: int = Field(16, ge=1, le=4096)
    chunk_cases: int = Field(64, ge=1, le=100_000)


class Scenario(_Model):
    """A whole scenario file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    seed: int = Field(ge=0, lt=2**63)
    phantom: PhantomSection
    population: PopulationSpec = Field(default_factory=PopulationSpec)
    baseline: list[BaselineStep] = Field(default_factory=list)
    perturbations: list[PerturbationSweep] = Field(min_length=1)
    models: list[ModelSection] = Field(min_length=1)
    metrics: list[str] = Field(default_factory=lambda: ["auc"], min_length=1)
    statistics: StatisticsSection = Field(default_factory=StatisticsSection)
    gate: list[GateCriterion] = Field(default_factory=list)
    execution: ExecutionSection = Field(default_factory=ExecutionSection)

    def n_evaluations(self) -> int:
        """Cases x (severity points over all sweeps) x models."""
        return self.phantom.n_cases * sum(p.n_points for p in self.perturbations) * len(self.models)

    def summary(self) -> str:
        """One line: cases x perturbations (severities) x models = N evaluations."""
        n_sev = sum(p.n_points for p in self.perturbations)
        return (
            f"{self.name}: {self.phantom.n_cases} cases x {len(self.perturbations)} sweeps "
            f"({n_sev} severity points) x {len(self.models)} models = {self.n_evaluations()} evaluations"
        )
