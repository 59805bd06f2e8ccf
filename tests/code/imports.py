"""The project's import graph, read from the source (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "flows", "deploy", "benchmarks")


def module_file(module: str) -> Path | None:
    """The file of a project module (`tasks.core.config` -> tasks/core/config.py), or None."""
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def project_modules() -> list[str]:
    """Every module of the project's packages (package __init__ files included)."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def imports_of(module: str) -> set[str]:
    """Project modules that `module` imports, at any depth of its code."""
    path = module_file(module)
    if path is None:
        return set()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` imports a.b, and a.b.c when c is a module
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name) is not None:
                found.add(name)
    found.discard(module)
    return found


def closure(module: str) -> set[str]:
    """`module` and every project module it imports, directly or through others."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += sorted(imports_of(current))
    return seen


def find_cycle() -> list[str] | None:
    """One import cycle among the project's modules, or None."""
    graph = {module: imports_of(module) for module in project_modules()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target] if target in path else [target]
            if state.get(target) is None:
                cycle = visit(target, [*path, target])
                if cycle:
                    return cycle
        state[module] = 2
        return None

    for module in graph:
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def code_deps(module: str) -> set[str]:
    """The files `dvc.yaml` must list for a stage run as `python -m <module>`: its closure,
    without package __init__ files (they hold only a docstring, which a test checks)."""
    return {
        str(module_file(name).relative_to(REPO_ROOT))
        for name in closure(module)
        if module_file(name).name != "__init__.py"
    }


# Code a stage runs without importing it: package builds the BentoML service into a bento and
# serves it, so the bento (and the stage's result) changes when the service's code does.
RUNS_WITHOUT_IMPORTING = {"tasks.package": ("deploy.service",)}


def stage_code_deps(module: str) -> set[str]:
    """The code files `dvc.yaml` must list for the stage run as `python -m <module>`."""
    found = code_deps(module)
    for other in RUNS_WITHOUT_IMPORTING.get(module, ()):
        found |= code_deps(other)
    return found
