"""ARCHITECTURE.md's "which part may know which", enforced: imports flow one way.

Read from the source (every import, lazy ones inside functions included; type-only imports
under `if TYPE_CHECKING:` excepted, as they never run), plus one real import of config in a
fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lem_ray

PACKAGE = Path(lem_ray.__file__).parent

# part -> top-level modules (ours as "lem_ray.<part>", or third-party) it must never import.
# measure runs a backend it is handed: the Backend interface is a type-only import there.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "config": ("ray", "torch", "pyarrow"),
    "backends": ("lem_ray.execution", "lem_ray.telemetry", "lem_ray.results", "lem_ray.measure"),
    "telemetry": ("lem_ray.backends", "lem_ray.measure"),
    "measure": ("ray", "torch", "lem_ray.execution", "lem_ray.backends", "lem_ray.results"),
    "results": ("lem_ray.backends", "lem_ray.execution"),
    "records": ("lem_ray",),
    "backend_table": ("lem_ray",),
}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import that can run."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        where = path.relative_to(PACKAGE.parent)
        for line, module in imports_of(path):
            for banned in FORBIDDEN.get(part, ()):
                if _within(module, banned):
                    found.append(f"{where}:{line}: {part} imports {module}")
            if part != "cli" and _within(module, "lem_ray.cli"):
                found.append(f"{where}:{line}: only cli may import {module}")
    return found


def test_imports_flow_one_way() -> None:
    assert violations() == []


def test_the_scan_sees_lazy_and_relative_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "lem_ray"
    (fake / "backends").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "backends" / "__init__.py").write_text("")
    (fake / "backends" / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from lem_ray.results import store\n"
        "def f():\n    from ..telemetry import nvml\n    import lem_ray.cli.main\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations() == [
        "lem_ray/backends/x.py:5: backends imports lem_ray.telemetry",
        "lem_ray/backends/x.py:6: only cli may import lem_ray.cli.main",
    ]


def test_config_imports_no_ray_torch_or_arrow() -> None:
    modules = sorted(_module_name(p) for p in (PACKAGE / "config").glob("*.py"))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'pyarrow'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_measure_imports_no_ray_or_torch() -> None:
    """A notebook measuring its own model on local GPUs needs neither."""
    code = (
        "import sys, lem_ray.measure\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
