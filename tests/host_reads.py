"""A static check shared by the perturbation tests: the apply path never reads device data on the host."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable
from types import ModuleType

HOST_READS = frozenset({"cpu", "numpy", "item", "tolist"})


def apply_path_functions(modules: Iterable[ModuleType], roots: Iterable[str]) -> list[ast.FunctionDef]:
    """Every function of ``modules`` reachable by name from the functions ``roots``."""
    defs = {}
    for module in modules:
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.FunctionDef):
                defs[node.name] = node
    todo, seen = list(roots), {}
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen[name] = defs[name]
        for call in ast.walk(defs[name]):
            if isinstance(call, ast.Call):
                todo.append(
                    call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
                )
    return list(seen.values())


def assert_no_host_reads(functions: Iterable[ast.FunctionDef]) -> None:
    """Fail when a function calls ``.cpu()``, ``.numpy()``, ``.item()`` or ``.tolist()``."""
    for fn in functions:
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute):
                assert node.attr not in HOST_READS, f"{fn.name} calls .{node.attr}()"
