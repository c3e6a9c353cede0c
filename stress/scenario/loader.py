"""Read a scenario file: YAML -> :class:`Scenario`, every problem reported as ``FILE:LINE:COL: path: msg``.

Two passes. The first validates structure and types with pydantic and reports every problem it
finds. Once the structure is valid, the second checks names against the registries (phantom
generators, perturbations, metrics), validates each entry's ``params`` against the spec of what it
names, checks severities against the perturbation's physical range, population attributes against
the generator's, repeated names, model modules, and gate rules, and reports all of those together.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from perturbations import PERTURBATIONS
from phantoms import PHANTOMS
from stress.errors import Problem, ScenarioError, did_you_mean, unknown_name_message
from stress.scenario.checks import (
    command_input_problem,
    gate_problems,
    model_target_problem,
    phantom_problem,
)
from stress.scenario.checks import phantom_spec as phantom_spec  # re-exported: callers import it from here
from stress.scenario.schema import DERIVE_UPDATES, WEIGHT_UPDATES, ModelSection, Scenario
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


def _model_classes(ann: Any) -> list[Any]:
    """The innermost types of an annotation: ``list[X] | None`` -> ``[X]``, ``A | B`` -> ``[A, B]``."""
    if get_origin(ann) is None:
        return [ann]
    args = get_args(ann)[:1] if get_origin(ann) is Annotated else get_args(ann)
    inner = [a for a in args if a is not type(None)]
    if get_origin(ann) not in (Annotated, Union, UnionType):
        inner = inner[-1:]  # list[X], dict[K, X]: the item type
    return [c for a in inner for c in _model_classes(a)]


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (to list its allowed keys).

    A field holding a tagged union (``derive``) is followed through the tag pydantic puts in ``loc``.
    """
    cls: Any = root
    parts = [p for p in loc if not isinstance(p, int)]
    while parts:
        part = parts.pop(0)
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in _keys(cls):
            return None
        classes = _model_classes(cls.model_fields[_keys(cls)[part]].annotation)
        if len(classes) > 1 and parts and parts[0] in DERIVE_UPDATES:
            classes = [DERIVE_UPDATES[parts.pop(0)]]
        cls = classes[-1] if classes else None
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _keys(cls: type[BaseModel]) -> dict[str, str]:
    """The keys a model accepts in a file (aliases, e.g. ``from``) -> field names."""
    return {f.alias or name: name for name, f in cls.model_fields.items()}


def _without_tags(loc: Loc) -> Loc:
    """``loc`` without pydantic's union tags: ``models[0].derive.prune.amount`` -> ``...derive.amount``."""
    return tuple(p for i, p in enumerate(loc) if not (i and loc[i - 1] == "derive" and p in DERIVE_UPDATES))


def _pydantic_problems(
    exc: ValidationError, root: type[BaseModel], prefix: Loc, file: str, positions: dict
) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = _without_tags((*prefix, *err["loc"]))
        kind = err["type"]
        if (
            kind in ("union_tag_invalid", "union_tag_not_found")
            and (err.get("ctx") or {}).get("discriminator") == "'update'"
        ):
            tag = (err.get("ctx") or {}).get("tag")
            msg = (
                unknown_name_message("update", tag, DERIVE_UPDATES)
                if tag is not None
                else f"update is missing (expected one of: {', '.join(DERIVE_UPDATES)})"
            )
            loc = (*loc, "update")
            problems.append(Problem(file, *position_of(positions, loc), format_loc(loc), msg))
            continue
        if kind == "extra_forbidden":
            key = loc[-1]
            owner = _model_at(root, err["loc"][:-1])
            allowed = sorted(_keys(owner)) if owner else []
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
    entries = [
        (("baseline", i), s.name, [(s.severity, ("severity",))], s.params) for i, s in enumerate(sc.baseline)
    ]
    for i, p in enumerate(sc.perturbations):
        entries.append(
            (
                ("perturbations", i),
                p.name,
                [(v, ("severities", j)) for j, v in enumerate(p.severities)],
                p.params,
            )
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
        if pert.check_phantom is not None:
            msg = phantom_problem(pert, params, sc)
            if msg:
                add((*where, "params"), f"{name}: {msg}")
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
        if model.derive is not None:
            _derive_problems(sc, i, add, out, file, positions)
        elif check_imports:
            problem = model_target_problem(model, Path(file).parent)
            if problem:
                add(("models", i, model.adapter[0]), problem)
        problem = command_input_problem(model, sc)
        if problem:
            add(("models", i, "command_io", "input_format"), problem)
    gate_problems(sc, attributes, add)
    return out


def _derive_problems(sc: Scenario, i: int, add, out: list[Problem], file: str, positions: dict) -> None:
    """``models[i].derive``: a source listed earlier, whose weights we hold when the update changes them."""
    derive = sc.models[i].derive
    assert derive is not None
    loc = ("models", i, "derive")
    names = [m.name for m in sc.models]
    if derive.source == sc.models[i].name:
        add((*loc, "from"), f"model '{derive.source}' cannot be derived from itself (expected another model)")
        return
    if derive.source not in names[:i]:
        if derive.source in names:
            add(
                (*loc, "from"),
                f"model '{derive.source}' is listed after '{sc.models[i].name}' (expected a model listed "
                "earlier: a derived model comes after its source)",
            )
        else:
            add((*loc, "from"), unknown_name_message("model", derive.source, names[:i]))
        return
    chain = _source_chain(sc, i)
    root = chain[-1]
    if derive.update in WEIGHT_UPDATES:
        if root.derive is None and root.adapter[0] != "python":
            add(
                (*loc, "update"),
                f"'{derive.update}' changes weights, which '{derive.source}' does not expose (it "
                f"{'is' if root is chain[0] else 'comes from'} a {root.adapter[0]} model; expected a python "
                "model as the source; threshold_shift and temperature wrap any model)",
            )
        quantized = [m.name for m in chain if m.derive is not None and m.derive.update == "quantize_int8"]
        if quantized:
            add(
                (*loc, "update"),
                f"'{derive.update}' changes float weights, but '{quantized[0]}' holds int8 weights (expected "
                "quantize_int8 as the last weight update of a chain)",
            )
    if derive.update == "threshold_shift":
        total = derived_threshold(sc, i)
        if not 0.0 <= total <= 1.0:
            add(
                (*loc, "delta"),
                f"the source's threshold {total - derive.delta:g} shifted by {derive.delta:g} is {total:g} "
                "(expected a threshold in [0, 1])",
            )
    if derive.update == "fine_tune" and derive.shift is not None:
        where = (*loc, "shift")
        if derive.shift.name not in PERTURBATIONS:
            add((*where, "name"), unknown_name_message("perturbation", derive.shift.name, PERTURBATIONS))
            return
        pert = PERTURBATIONS.get(derive.shift.name)
        _check_params(pert.spec, derive.shift.params, (*where, "params"), file, positions, out)
        msg = pert.severity.check(derive.shift.severity)
        if msg:
            add((*where, "severity"), msg)


def _source_chain(sc: Scenario, i: int) -> list[ModelSection]:
    """The source of ``models[i]``, its source, ... (each listed before the previous), the loaded one last."""
    names = [m.name for m in sc.models]
    chain: list[ModelSection] = []
    model = sc.models[i]
    while model.derive is not None and model.derive.source in names[:i]:
        i = names.index(model.derive.source)
        model = sc.models[i]
        chain.append(model)
    return chain


def derived_threshold(sc: Scenario, i: int) -> float:
    """The threshold of ``models[i]``: its own when given, else its source's (plus a ``threshold_shift``)."""
    model = sc.models[i]
    if model.derive is None or "threshold" in model.model_fields_set:
        return model.threshold
    chain = _source_chain(sc, i)
    if not chain:
        return model.threshold
    names = [m.name for m in sc.models]
    shift = model.derive.delta if model.derive.update == "threshold_shift" else 0.0
    return derived_threshold(sc, names.index(chain[0].name)) + shift


def parse_scenario(text: str, file: str = "<scenario>", *, check_imports: bool = True) -> Scenario:
    """Validate scenario ``text``; raise :class:`ScenarioError` listing every problem.

    ``check_imports=False`` skips checking that model modules can be imported (downstream stages
    rebuild a run's scenario without needing its models). A derived model without a ``threshold`` of
    its own gets its source's (shifted by ``threshold_shift``), so that every stage reads the threshold
    the model runs with from the scenario.
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
    models = [
        m if m.derive is None else m.model_copy(update={"threshold": derived_threshold(scenario, i)})
        for i, m in enumerate(scenario.models)
    ]
    return scenario.model_copy(update={"models": models})


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
