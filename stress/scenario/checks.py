"""Checks of a scenario's references that need more than its schema: model targets and gate rules.

Used by :mod:`stress.scenario.loader` in its second validation pass; every check returns or reports
messages that say what was found and what was expected.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from perturbations import PERTURBATIONS
from phantoms import PHANTOMS
from stress.errors import StressError, did_you_mean, unknown_name_message
from stress.gate.rules import RuleSyntaxError, parse_rule
from stress.scenario.schema import ModelSection, Scenario


def model_path(target: str, base_dir: Path) -> Path:
    """A model file or folder named in a scenario: relative paths are taken from the scenario's folder."""
    path = Path(target).expanduser()
    return path if path.is_absolute() else base_dir / path


def model_target_problem(model: ModelSection, base_dir: Path) -> str | None:
    """Why a model's adapter target cannot be used, or ``None`` (importable module, file or folder found)."""
    key, target = model.adapter
    if key == "python":
        module = target.split(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"module '{module}' cannot be found (expected an importable module:factory)"
    if key == "command":
        from stress.models.command import parse_template  # here: stress.models imports this module's schema

        try:
            parse_template(target, "command", base_dir)
        except StressError as exc:
            return str(exc).removeprefix("command.command: ")
        return None
    if key in ("torchscript", "onnx", "monai_bundle"):
        path = model_path(target, base_dir)
        want_dir = key == "monai_bundle"
        if not (path.is_dir() if want_dir else path.is_file()):
            what = "a bundle folder" if want_dir else "a model file"
            return f"{path} does not exist (expected {what}; relative paths start at the scenario's folder)"
    return None


def _with_aliases(names: list[str]) -> set[str]:
    """Perturbation names together with their severity quantities' names."""
    return set(names) | {PERTURBATIONS.get(n).severity.name for n in names if n in PERTURBATIONS}


def _names_a_grid(sc: Scenario, names: list[str]) -> bool:
    """Whether ``names`` (perturbation or severity names) are the two families of one grid sweep."""
    for p in sc.perturbations:
        if p.grid is None:
            continue
        a, b = _with_aliases([p.name]), _with_aliases([p.grid.name])
        if (names[0] in a and names[1] in b) or (names[0] in b and names[1] in a):
            return True
    return False


def gate_problems(sc: Scenario, attributes: dict, add) -> None:
    """Report, through ``add(location, message)``, every gate criterion that cannot be evaluated."""
    sweep_names = _with_aliases(
        [p.name for p in sc.perturbations] + [p.grid.name for p in sc.perturbations if p.grid]
    )
    for i, crit in enumerate(sc.gate):
        try:
            rule = parse_rule(crit.rule)
        except RuleSyntaxError as exc:
            add(("gate", i, "rule"), str(exc))
            continue
        if rule.metric not in sc.metrics:
            add(
                ("gate", i, "rule"),
                f"metric '{rule.metric}' is not computed by this scenario"
                f"{did_you_mean(rule.metric, sc.metrics)} (expected one of metrics: {', '.join(sc.metrics)})",
            )
        for cond in rule.conditions:
            if cond.sweep not in sweep_names:
                add(
                    ("gate", i, "rule"),
                    unknown_name_message("perturbation or severity", cond.sweep, sweep_names),
                )
        one_d = [p.name for p in sc.perturbations if p.grid is None]
        if len(rule.conditions) == 1 and rule.conditions[0].sweep in sweep_names - _with_aliases(one_d):
            add(
                ("gate", i, "rule"),
                f"'{rule.conditions[0].sweep}' is swept only inside a grid (expected a 1-D sweep of it, or "
                "a condition on each family of the grid: 'for A OP X and B OP Y')",
            )
        if len(rule.conditions) == 2 and not _names_a_grid(sc, [c.sweep for c in rule.conditions]):
            grids = [p.sweep_id for p in sc.perturbations if p.grid] or ["none"]
            add(
                ("gate", i, "rule"),
                f"'for ... and ...' names {rule.conditions[0].sweep} and {rule.conditions[1].sweep}, which "
                "are not the two families of one grid sweep "
                f"(expected a grid of this scenario: {', '.join(grids)})",
            )
        scope_attr = rule.scope.split(":")[-1].split("=")[0]
        if rule.scope not in ("overall", "every") and scope_attr not in sc.statistics.subgroups:
            add(
                ("gate", i, "rule"),
                f"subgroup attribute '{scope_attr}' is not in statistics.subgroups"
                f"{did_you_mean(scope_attr, sc.statistics.subgroups)} (expected one of: "
                f"{', '.join(sc.statistics.subgroups) or 'none configured'})",
            )
        elif "=" in rule.scope and attributes.get(scope_attr) is not None:
            level = rule.scope.split("=", 1)[1]
            if level not in attributes[scope_attr].levels:
                add(
                    ("gate", i, "rule"),
                    unknown_name_message(f"level of '{scope_attr}'", level, attributes[scope_attr].levels),
                )
        for j, model in enumerate(crit.models or []):
            if model not in [m.name for m in sc.models]:
                add(
                    ("gate", i, "models", j),
                    unknown_name_message("model", model, [m.name for m in sc.models]),
                )


def phantom_problem(pert: Any, params: dict[str, Any], sc: Scenario) -> str | None:
    """A perturbation's own check that its settings fit the scenario's phantom.

    Skipped when the settings or the phantom section are invalid: those problems are reported where
    they are.
    """
    try:
        spec = pert.spec.model_validate(params)
        phantom = phantom_spec(sc)
    except (ValidationError, KeyError, ValueError):
        return None
    return pert.check_phantom(spec, sc.phantom.generator, phantom, sc.population)


def command_input_problem(model: ModelSection, sc: Scenario) -> str | None:
    """Why a black box cannot be fed this scenario's images as written, or ``None``."""
    if (
        model.command is None
        or model.command_io.input_format != "dicom"
        or sc.phantom.generator not in PHANTOMS
    ):
        return None
    modality = PHANTOMS.get(sc.phantom.generator).modality
    if modality == "CT":
        return None
    return (
        f"dicom writes a CT series, but {sc.phantom.generator} makes {modality} images "
        "(expected input_format: nifti for MR phantoms)"
    )


def phantom_spec(sc: Scenario) -> BaseModel:
    """The validated generator spec of a scenario."""
    return PHANTOMS.get(sc.phantom.generator).spec.model_validate(sc.phantom.params)
