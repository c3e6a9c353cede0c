"""User-facing errors: one clear message, exit code 2, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class StressError(Exception):
    """Bad input (scenario, run directory, model output). The CLI prints it and exits with 2."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in an input file, located as precisely as we can.

    Attributes:
        file: path of the file the problem is in.
        line: 1-based line number, or 0 when unknown.
        col: 1-based column, or 0 when unknown.
        path: dotted field path, e.g. ``perturbations[1].severities[0]``.
        message: what is wrong, including what was expected.
    """

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {self.path or '<root>'}: {self.message}"


class ScenarioError(StressError):
    """A scenario file has one or more problems; ``str()`` lists them all, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col))
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name_message(kind: str, name: str, choices: Iterable[str]) -> str:
    """Message for an unknown registry name, with a suggestion and the list of known names."""
    choices = sorted(choices)
    return f"unknown {kind} '{name}'{did_you_mean(name, choices)} (expected one of: {', '.join(choices)})"
