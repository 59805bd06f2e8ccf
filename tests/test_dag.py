"""dvc.yaml lists, for each stage, exactly the code it runs: the stage module and every
`tasks` module it imports, directly or through others (lazy imports included)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO_ROOT

IMPORT = re.compile(r"^\s*from tasks\.(\w+) import", re.MULTILINE)


def _imports(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += IMPORT.findall((REPO_ROOT / "tasks" / f"{current}.py").read_text())
    return seen


def test_every_stage_depends_on_exactly_the_code_it_imports() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = re.fullmatch(r"python -m tasks\.(\w+)", stage["cmd"]).group(1)
        declared = {dep for dep in stage["deps"] if dep.startswith("tasks/")}
        expected = {f"tasks/{m}.py" for m in _imports(module)}
        assert declared == expected, (
            f"{name}: missing {sorted(expected - declared)}, extra {sorted(declared - expected)}"
        )


def test_the_closure_follows_lazy_imports() -> None:
    assert "train" in _imports("tune") and "tune" in _imports("train")
