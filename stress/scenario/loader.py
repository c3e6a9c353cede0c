"""Read a scenario file: YAML -> :class:`Scenario`, every problem reported as ``FILE:LINE:COL: path: msg``.

Two passes. The first validates structure and types with pydantic and reports every problem it
finds. Once the structure is valid, the second checks names against the registries (phantom
generators, perturbations, metrics), validates each entry's ``params`` against the spec of what it
names, checks severities against the perturbation's physical range, population attributes against
the generator's, repeated names, model modules, and gate rules, and reports all of those together.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from perturbations import PERTURBATIONS
from phantoms import PHANTOMS
from stress.errors import Problem, ScenarioError, did_you_mean, unknown_name_message
from stress.gate.rules import RuleSyntaxError, parse_rule
from stress.scenario.schema import ModelSection, Scenario
from stress.scenario.yaml_positions import Loc, format_loc, load_yaml_with_positions, position_of
from stress.stats.metrics import METRICS

_EXPECTED = {
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "bool_type": "true or false",
    "missing": "this field to be present",
    "tuple_type": "a list",
    "model_attributes_type": "a mapping",
}


class LoadedScenario(BaseModel):
    """A validated scenario plus the exact text it came from and that text's SHA-256."""

    model_config = {"frozen": True, "arbitrary_types_allowed": True}

    scenario: Scenario
    text: str
    sha256: str
    path: str


def _message(err: dict[str, Any]) -> str:
    """Pydantic's message plus what was expected and what was given."""
    kind, ctx, msg = err["type"], err.get("ctx") or {}, err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    got_txt = "" if kind == "missing" or isinstance(got, (dict, list)) else f", got {got!r}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in _EXPECTED:
        return f"{msg} (expected {_EXPECTED[kind]}{got_txt})"
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"{msg} (expected a value {bounds[kind]} {limit}{got_txt})"
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return f"{msg.split(' after validation')[0]} (expected at least {least} item(s){got_txt})"
    if kind == "string_pattern_mismatch":
        return f"{msg} (expected letters, digits, '_', '.', '-' or 'module:function'{got_txt})"
    return msg


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (to list its allowed keys)."""
    cls: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        ann = cls.model_fields[part].annotation
        while get_origin(ann) is not None:
            args = [a for a in get_args(ann) if a is not type(None)]
            ann = args[-1] if args else None
        cls = ann
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _pydantic_problems(
    exc: ValidationError, root: type[BaseModel], prefix: Loc, file: str, positions: dict
) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = loc[-1]
            owner = _model_at(root, err["loc"][:-1])
            allowed = sorted(owner.model_fields) if owner else []
            msg = f"unknown key '{key}'{did_you_mean(str(key), allowed)}"
            if allowed:
                msg += f" (expected one of: {', '.join(allowed)})"
            line, col = position_of(positions, loc, key=True)
        else:
            msg = _message(err)
            line, col = position_of(positions, loc)
        problems.append(Problem(file, line, col, format_loc(loc), msg))
    return problems


def _check_params(
    spec_cls: type[BaseModel], params: dict, loc: Loc, file: str, positions: dict, problems: list[Problem]
) -> BaseModel | None:
    try:
        return spec_cls.model_validate(params)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, spec_cls, loc, file, positions))
        return None


def _semantic_problems(sc: Scenario, file: str, positions: dict, check_imports: bool) -> list[Problem]:
    out: list[Problem] = []

    def add(loc: Loc, msg: str, key: bool = False) -> None:
        out.append(Problem(file, *position_of(positions, loc, key=key), format_loc(loc), msg))

    gen_spec = None
    if sc.phantom.generator not in PHANTOMS:
        add(
            ("phantom", "generator"),
            unknown_name_message("phantom generator", sc.phantom.generator, PHANTOMS),
        )
    else:
        gen = PHANTOMS.get(sc.phantom.generator)
        gen_spec = _check_params(gen.spec, sc.phantom.params, ("phantom", "params"), file, positions, out)
    attributes = {}
    if gen_spec is not None:
        attributes = {a.name: a for a in PHANTOMS.get(sc.phantom.generator).attributes(gen_spec)}
        for name, dist in sc.population.attributes.items():
            loc = ("population", "attributes", name)
            if name not in attributes:
                add(
                    loc,
                    unknown_name_message(f"attribute of '{sc.phantom.generator}'", name, attributes),
                    key=True,
                )
                continue
            for level in dist:
                if level not in attributes[name].levels:
                    add(
                        (*loc, level),
                        unknown_name_message(f"level of '{name}'", level, attributes[name].levels),
                        key=True,
                    )
        for i, name in enumerate(sc.statistics.subgroups):
            if name not in attributes:
                add(
                    ("statistics", "subgroups", i),
                    unknown_name_message("subgroup attribute", name, attributes),
                )
    # (location of the entry, name, severities with their locations, params)
    entries = [(("baseline", i), s.name, [(s.severity, ("severity",))], s.params) for i, s in enumerate(sc.baseline)]
    for i, p in enumerate(sc.perturbations):
        entries.append(
            (("perturbations", i), p.name, [(v, ("severities", j)) for j, v in enumerate(p.severities)], p.params)
        )
        if p.grid is not None:
            grid_sev = [(v, ("severities", j)) for j, v in enumerate(p.grid.severities)]
            entries.append((("perturbations", i, "grid"), p.grid.name, grid_sev, p.grid.params))
    for where, name, severities, params in entries:
        if name not in PERTURBATIONS:
            add((*where, "name"), unknown_name_message("perturbation", name, PERTURBATIONS))
            continue
        pert = PERTURBATIONS.get(name)
        _check_params(pert.spec, params, (*where, "params"), file, positions, out)
        for value, loc in severities:
            msg = pert.severity.check(value)
            if msg:
                add((*where, *loc), msg)
    repeats = (
        (
            [b.name for b in sc.baseline],
            lambda i: ("baseline", i, "name"),
            "baseline step",
            "each perturbation once",
        ),
        (
            sc.statistics.subgroups,
            lambda i: ("statistics", "subgroups", i),
            "subgroup",
            "each attribute once",
        ),
        (
            [p.sweep_id for p in sc.perturbations],
            lambda i: ("perturbations", i, "name"),
            "sweep",
            "one sweep per perturbation or pair; merge the severity lists",
        ),
        ([m.name for m in sc.models], lambda i: ("models", i, "name"), "model name", "unique names"),
        ([c.id for c in sc.gate], lambda i: ("gate", i, "id"), "criterion id", "unique ids"),
    )
    for names, loc_of, what, expected in repeats:
        for i, name in enumerate(names):
            if name in names[:i]:
                add(loc_of(i), f"{what} '{name}' appears twice (expected {expected})")
    for i, metric in enumerate(sc.metrics):
        if metric not in METRICS:
            add(("metrics", i), unknown_name_message("metric", metric, METRICS))
    for i, model in enumerate(sc.models):
        if check_imports:
            problem = _model_target_problem(model, Path(file).parent)
            if problem:
                add(("models", i, model.adapter[0]), problem)
    _gate_problems(sc, attributes, add)
    return out


def model_path(target: str, base_dir: Path) -> Path:
    """A model file or folder named in a scenario: relative paths are taken from the scenario's folder."""
    path = Path(target).expanduser()
    return path if path.is_absolute() else base_dir / path


def _model_target_problem(model: ModelSection, base_dir: Path) -> str | None:
    """Why a model's adapter target cannot be used, or ``None`` (module importable, file or folder present)."""
    key, target = model.adapter
    if key == "python":
        module = target.split(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"module '{module}' cannot be found (expected an importable module:factory)"
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


def _gate_problems(sc: Scenario, attributes: dict, add) -> None:
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
                f"'for ... and ...' names {rule.conditions[0].sweep} and {rule.conditions[1].sweep}, which are "
                f"not the two families of one grid sweep (expected a grid of this scenario: {', '.join(grids)})",
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


def parse_scenario(text: str, file: str = "<scenario>", *, check_imports: bool = True) -> Scenario:
    """Validate scenario ``text``; raise :class:`ScenarioError` listing every problem.

    ``check_imports=False`` skips checking that model modules can be imported (downstream stages
    rebuild a run's scenario without needing its models).
    """
    data, positions = load_yaml_with_positions(text, file)
    if not isinstance(data, dict):
        raise ScenarioError(
            [Problem(file, 1, 1, "", f"expected a mapping at the top level, got {type(data).__name__}")]
        )
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_pydantic_problems(exc, Scenario, (), file, positions)) from None
    problems = _semantic_problems(scenario, file, positions, check_imports)
    if problems:
        raise ScenarioError(problems)
    return scenario


def load_scenario(path: str | Path) -> LoadedScenario:
    """Read and validate the scenario file at ``path``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError([Problem(str(path), 0, 0, "", f"cannot read file: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(
            [Problem(str(path), 0, 0, "", "file is not UTF-8 text (expected a YAML file)")]
        ) from None
    scenario = parse_scenario(text, str(path))
    return LoadedScenario(
        scenario=scenario, text=text, sha256=hashlib.sha256(raw).hexdigest(), path=str(path)
    )


def phantom_spec(sc: Scenario) -> BaseModel:
    """The validated generator spec of a scenario."""
    return PHANTOMS.get(sc.phantom.generator).spec.model_validate(sc.phantom.params)
