"""The package's arrows point one way: the deploy runtime and the file formats reach nothing above them,
no library module reaches the CLI, and only the PyTorch runner imports torch in the runtime.

Every import statement counts, at module level or inside a function: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgetl"
# What the runtime and the artifact readers may use: the leaves, and each other.
BELOW_RUNTIME = {"edgetl", "edgetl.errors", "edgetl.fileio", "edgetl.images", "edgetl.limits", "edgetl.machine"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from . import x`` counts as ``package.x``), resolved to absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for a in node.names:  # ``from pkg import module`` imports that module
                sub = PACKAGE.parent / f"{mod}.{a.name}".replace(".", "/")
                if sub.with_suffix(".py").exists() or sub.is_dir():
                    found.add(f"{mod}.{a.name}")
    return found


def _modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (PACKAGE / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("runtime", "artifacts"), ids=lambda p: _module_name(p))
def test_runtime_and_artifacts_import_nothing_above_them(path: Path) -> None:
    edgetl = {m for m in _imports(path) if m == "edgetl" or m.startswith("edgetl.")}
    allowed = {m for m in edgetl if m in BELOW_RUNTIME or m.startswith(("edgetl.runtime", "edgetl.artifacts"))}
    assert edgetl - allowed == set(), f"{_module_name(path)} reaches above the runtime"


@pytest.mark.parametrize("path", _modules("runtime", "artifacts"), ids=lambda p: _module_name(p))
def test_only_the_torch_runner_imports_torch_in_the_runtime(path: Path) -> None:
    torch = {m for m in _imports(path) if m == "torch" or m.startswith(("torch.", "torchvision"))}
    assert torch == set() or path == PACKAGE / "runtime" / "torch.py", _module_name(path)


def test_no_library_module_imports_the_cli() -> None:
    offenders = [_module_name(p) for p in PACKAGE.rglob("*.py")
                 if not _module_name(p).startswith(("edgetl.cli", "edgetl.__main__"))
                 and any(m == "edgetl.cli" or m.startswith("edgetl.cli.") for m in _imports(p))]
    assert offenders == []


def test_the_walker_sees_lazy_and_relative_imports() -> None:
    """The rule tests above are only as good as this: a function-level relative import is found."""
    assert "edgetl.evaluate" in _imports(PACKAGE / "bench" / "session.py")
    assert "edgetl.artifacts.manifest" in _imports(PACKAGE / "runtime" / "verify.py")


def test_an_onnx_predictor_runs_without_torch() -> None:
    """Importing the runtime and the artifact readers, as a deployment does, loads no torch."""
    code = ("import sys, edgetl.runtime, edgetl.artifacts.record, edgetl.artifacts.engine, edgetl.runtime.tensorrt; "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_the_readme_code_map_matches_the_tree() -> None:
    """One row per module in README's "Code map", no row for a module that is gone."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("## Code map"):]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", table, flags=re.M))
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(modules - listed) == [] and sorted(listed - modules) == []
