"""Load YAML while remembering where every key and value is, so errors can name file:line:col."""

from __future__ import annotations

from typing import Any

import yaml

from stress.errors import Problem, ScenarioError

Loc = tuple[str | int, ...]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader; duplicate keys are found by the position walk, not silently overwritten."""


def _walk(
    node: yaml.Node, loc: Loc, positions: dict[Loc, tuple[int, int]], file: str, problems: list[Problem]
) -> None:
    positions.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            here = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key_node.tag != "tag:yaml.org,2002:str":
                kind = key_node.tag.rsplit(":", 1)[-1]
                problems.append(
                    Problem(
                        file,
                        *here,
                        format_loc((*loc, key)),
                        f"key '{key}' is read by YAML as a {kind}, not a string (expected a text "
                        f"key: quote it, e.g. \"{key}\"; note 'on', 'yes', 'no' are booleans)",
                    )
                )
            if key in seen:
                problems.append(
                    Problem(
                        file,
                        *here,
                        format_loc((*loc, key)),
                        f"duplicate key '{key}' (expected each key once)",
                    )
                )
            seen.add(key)
            positions[(*loc, key, "<key>")] = here
            _walk(value_node, (*loc, key), positions, file, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), positions, file, problems)


def load_yaml_with_positions(text: str, file: str) -> tuple[Any, dict[Loc, tuple[int, int]]]:
    """Parse ``text``; return the data and a map from field path to (line, col), both 1-based.

    Raises:
        ScenarioError: on a YAML syntax error or a duplicate key, located in ``file``.
    """
    try:
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = str(exc.problem or exc).strip()
        raise ScenarioError(
            [
                Problem(
                    file,
                    line,
                    col,
                    "",
                    f"YAML syntax error: {problem} "
                    "(expected valid YAML: check indentation, colons and quotes)",
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise ScenarioError([Problem(file, 0, 0, "", f"YAML error: {exc}")]) from None
    positions: dict[Loc, tuple[int, int]] = {}
    problems: list[Problem] = []
    if node is not None:
        _walk(node, (), positions, file, problems)
    if problems:
        raise ScenarioError(problems)
    return data, positions


def format_loc(loc: Loc) -> str:
    """``('perturbations', 1, 'severities')`` -> ``perturbations[1].severities``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def position_of(positions: dict[Loc, tuple[int, int]], loc: Loc, key: bool = False) -> tuple[int, int]:
    """Position of ``loc`` (of its key when ``key``), else of its closest located ancestor."""
    if key and (*loc, "<key>") in positions:
        return positions[(*loc, "<key>")]
    for n in range(len(loc), -1, -1):
        if loc[:n] in positions:
            return positions[loc[:n]]
    return (0, 0)
