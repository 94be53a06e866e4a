"""The package's layers and their one-way imports, read from the source (AST), plus what
importing a layer actually loads.

    errors <- core (torch, pydantic) <- techniques (torch) <- run <- study (Ray, Optuna)
    regime (numpy only), used by study and analysis
    results (pyarrow), used by the CLI and the study layer
    analysis (pandas, seaborn) never imports study
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "regimes"

# layer -> top-level packages it must never import (third-party or of this package)
FORBIDDEN = {
    "core": {"ray", "optuna", "pandas", "seaborn", "matplotlib", "pyarrow",
             "regimes.techniques", "regimes.study", "regimes.analysis", "regimes.run", "regimes.results"},
    "techniques": {"ray", "optuna", "pandas", "seaborn", "matplotlib", "pyarrow",
                   "regimes.study", "regimes.analysis", "regimes.run"},
    "regime": {"torch", "ray", "optuna", "pandas", "seaborn", "matplotlib", "pyarrow", "regimes.core",
               "regimes.techniques", "regimes.study", "regimes.analysis", "regimes.run"},
    "analysis": {"ray", "optuna", "regimes.study", "regimes.techniques", "regimes.run"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    # imports under `if TYPE_CHECKING:` are for annotations only: never executed
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    nodes = tree.body if top_level_only else [n for n in ast.walk(tree) if id(n) not in typing_only]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}     # `from pkg import submodule`
    return out


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _hits(imported: set[str], forbidden: set[str]) -> set[str]:
    return {i for i in imported for f in forbidden if i == f or i.startswith(f + ".")}


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_each_layer_imports_only_what_it_may(layer):
    bad = {}
    for path in (PKG / layer).rglob("*.py"):
        hits = _hits(_imports(path), FORBIDDEN[layer])
        if hits:
            bad[str(path.relative_to(PKG))] = sorted(hits)
    assert not bad, f"layer {layer} crosses its boundary: {bad}"


def test_no_import_cycles_between_modules():
    """Imports between the package's modules (also those inside functions) form no cycle."""
    names = {_module_name(p): p for p in _modules()}
    graph = {n: {i for i in _imports(p) if i in names and i != n} for n, p in names.items()}
    # a package's __init__ importing its own submodules is not a cycle back to the package
    for n in graph:
        graph[n] = {d for d in graph[n] if not n.startswith(d + ".")}
    state, cycle = {}, []

    def visit(n, stack):
        state[n] = "open"
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                cycle.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycle, "import cycles: " + "; ".join(" -> ".join(c) for c in cycle)


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_config_and_regime_load_without_torch_and_the_trainer_without_ray_or_pandas():
    light = _loaded_after("import regimes.core.config, regimes.regime, regimes.cli")
    assert not light & {"torch", "ray", "pandas", "optuna"}, light & {"torch", "ray", "pandas", "optuna"}
    trainer = _loaded_after("from regimes import Trainer, train")
    assert "torch" in trainer and not trainer & {"ray", "pandas", "optuna", "seaborn"}


def test_a_study_driver_runs_without_torch():
    """The driver's modules and a trials.parquet row as the sink makes it load no torch (a CPU head
    node needs none; importing it cost ~2 s of every sweep's start): torch, the GPU and the device
    in the row are the trial's, from its reports."""
    loaded = _loaded_after(
        "from regimes.study import launch, sink, console, trainable, boundary, search; "
        "from regimes import results; "
        "row = results.trial_summary({'device': 'auto'}, [], 's', 't', 'running', "
        "extra={'torch_version': '9.9', 'cuda_device': 'X', 'device': 'cuda:0'}, torch=False); "
        "assert row['torch_version'] == '9.9' and row['cuda_device'] == 'X' and row['device'] == 'cuda:0', row")
    assert "torch" not in loaded and "ray" in loaded
