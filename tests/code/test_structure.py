"""The shape of the code: stages are leaves over a layered library, and dvc.yaml knows it.

- no import cycle among the project's modules;
- nothing imports a stage module (tests aside), and the library packages are layered:
  core <- data <- modeling <- tuning (each imports only those before it);
- `tasks.core` and `flows/` never import torch or lightning, directly or through project modules;
- no project module is over 600 lines (a guide against sprawl, not a reason to split one idea);
  package `__init__` files hold only a docstring;
- every stage in dvc.yaml lists exactly the code it imports as its deps.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import yaml

from tests.code.imports import (
    REPO_ROOT,
    closure,
    code_deps,
    find_cycle,
    imports_of,
    module_file,
    project_modules,
    stage_code_deps,
)

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
STAGES = {
    re.fullmatch(r"python -m (tasks\.\w+)", stage["cmd"]).group(1) for stage in DVC.values()
} | {"tasks.source"}  # the source step runs before `dvc repro`, outside the DAG
LAYERS = (  # each package may import only itself and the packages before it
    "tasks.core",
    "tasks.reporting",  # torch-free: reads the reports, writes the HTML page
    "tasks.evaluation",  # numpy: metrics with their uncertainty, their plots
    "tasks.data",
    "tasks.modeling",
    "tasks.explaining",
    "tasks.compression",
    "tasks.tuning",
    "tasks.registry",
    "tasks.serving",
    "tasks.packaging",
    "tasks.monitoring",
    "tasks.continual",  # fine-tunes the champion on a new batch; registers and packages it
)
TORCH_FREE = ("tasks.core", "tasks.reporting", "tasks.evaluation", "flows")
HEAVY = {"torch", "torchvision", "torchmetrics", "lightning", "pytorch_lightning"}


def third_party_imports(module: str) -> set[str]:
    """Top-level names of the non-project packages `module` imports anywhere in its code."""
    tree = ast.parse(module_file(module).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names - {"tasks", "flows", "deploy", "benchmarks"}


def test_the_stage_list_is_what_dvc_runs() -> None:
    assert "tasks.train" in STAGES and "tasks.tune" in STAGES and len(STAGES) == 13
    for stage in STAGES:
        source = module_file(stage).read_text()
        assert "def main() -> None:" in source and 'if __name__ == "__main__":' in source, stage


def test_there_is_no_import_cycle() -> None:
    assert find_cycle() is None, f"import cycle: {' -> '.join(find_cycle() or [])}"


def _scratch_package(root, monkeypatch, modules: dict[str, str]):
    """A package `tasks` of `modules` (name -> source) under `root`, seen by tests.code.imports."""
    from tests.code import imports

    package = root / "tasks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in modules.items():
        (package / f"{name}.py").write_text(source)
    monkeypatch.setattr(imports, "REPO_ROOT", root)
    monkeypatch.setattr(imports, "PACKAGES", ("tasks",))
    return imports


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch) -> None:
    # the check above must be able to fail: a two-module cycle hidden in a function
    imports = _scratch_package(
        tmp_path,
        monkeypatch,
        {"a": "from tasks.b import x\n", "b": "def f():\n    from tasks.a import y\n"},
    )
    assert imports.find_cycle() in (
        ["tasks.a", "tasks.b", "tasks.a"],
        ["tasks.b", "tasks.a", "tasks.b"],
    )


def test_nothing_imports_a_stage_module() -> None:
    offenders = {
        module: sorted(imports_of(module) & STAGES)
        for module in project_modules()
        if imports_of(module) & STAGES
    }
    assert offenders == {}, f"stage modules are leaves; imported by {offenders}"


def test_the_library_is_layered() -> None:
    for rank, layer in enumerate(LAYERS):
        allowed = LAYERS[: rank + 1]
        for module in project_modules():
            if module != layer and not module.startswith(layer + "."):
                continue
            for target in imports_of(module):
                assert target.startswith(allowed), (
                    f"{module} imports {target}: {layer} may import only {', '.join(allowed)}"
                )


def test_core_reporting_evaluation_and_flows_never_reach_torch() -> None:
    roots = [m for m in project_modules() if m.startswith(TORCH_FREE)]
    for root in roots:
        for module in closure(root):
            heavy = third_party_imports(module) & HEAVY
            assert not heavy, f"{root} reaches {module}, which imports {sorted(heavy)}"
    probe = (
        "import sys, flows.pipeline, tasks.core.config, tasks.core.runner, tasks.core.layout, "
        "tasks.core.fingerprint, tasks.core.overrides, tasks.core.contracts, tasks.report, "
        "tasks.evaluation.metrics, tasks.evaluation.plots\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(HEAVY)!r}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]", f"importing flows/core loaded {loaded.stdout.strip()}"


MAX_LINES = 600


def test_no_project_module_is_over_600_lines() -> None:
    long = {
        module: count
        for module in project_modules()
        if (count := len(module_file(module).read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"these modules are over {MAX_LINES} lines (is each one idea?): {long}"


def test_package_init_files_hold_only_a_docstring() -> None:
    # dvc.yaml leaves __init__ files out of the stages' deps, which is sound only while they
    # hold no code
    for module in project_modules():
        path = module_file(module)
        if path.name != "__init__.py":
            continue
        body = ast.parse(path.read_text()).body
        code = [
            n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
        ]
        assert code == [], f"{path.relative_to(REPO_ROOT)} holds code; move it into a module"


def test_every_stage_depends_on_exactly_the_code_it_imports() -> None:
    for name, stage in DVC.items():
        module = re.fullmatch(r"python -m (tasks\.\w+)", stage["cmd"]).group(1)
        code = [dep for dep in stage["deps"] if dep.startswith(("tasks/", "deploy/"))]
        declared = {dep for dep in code if dep.endswith(".py")}
        expected = stage_code_deps(module)
        assert declared == expected, (
            f"{name}: missing {sorted(expected - declared)}, extra {sorted(declared - expected)}"
        )


def test_train_and_tune_do_not_depend_on_each_other() -> None:
    # editing tune's plots must not retrain the model, nor train's reports rerun the search
    assert "tasks/train.py" not in code_deps("tasks.tune")
    assert "tasks/tune.py" not in code_deps("tasks.train")


def test_the_closure_follows_lazy_imports(tmp_path, monkeypatch) -> None:
    imports = _scratch_package(
        tmp_path,
        monkeypatch,
        {"a": "def f():\n    from tasks.b import x\n", "b": "import tasks.c\n", "c": ""},
    )
    assert imports.closure("tasks.a") == {"tasks.a", "tasks.b", "tasks.c"}


def test_nothing_is_unpickled_from_checkpoints() -> None:
    # house rule: weights are safetensors or torch.load(weights_only=True), never a full unpickle
    for module in project_modules():
        tree = ast.parse(module_file(module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load":
                for keyword in node.keywords:
                    if keyword.arg == "weights_only":
                        assert not (
                            isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                        ), f"{module}: torch.load(weights_only=False)"
