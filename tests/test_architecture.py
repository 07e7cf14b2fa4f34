"""The folders show the parts, and the import graph keeps them apart.

- the core (`agentflow/_*.py`) never imports evaluation, the CLI, serving or workflows;
- `agentflow.eval` imports the core, never the CLI, serving or workflows;
- `serving`, `workflows` and `benchmarks` use public names only (no `agentflow._x`, no `serving._x`
  from outside serving);
- only `agentflow.cli` puts the parts together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append(module)
            found.extend(f"{module}.{alias.name}" for alias in node.names)
    return found


def _files(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).glob("*.py"))


CORE = _files("agentflow")


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_imports_no_other_part(path: Path) -> None:
    for module in _imports(path):
        for other in ("agentflow.eval", "agentflow.cli", "serving", "workflows"):
            assert not (module == other or module.startswith(other + ".")), f"{path.name} imports {module}"


@pytest.mark.parametrize("path", _files("agentflow", "eval"), ids=lambda p: p.name)
def test_evaluation_imports_the_core_only(path: Path) -> None:
    for module in _imports(path):
        for other in ("agentflow.cli", "serving", "workflows"):
            assert not (module == other or module.startswith(other + ".")), f"eval/{path.name} imports {module}"


@pytest.mark.parametrize(
    "path",
    [*_files("serving"), *_files("workflows"), *_files("benchmarks"), *_files("examples")],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_other_packages_use_public_names_only(path: Path) -> None:
    own = path.parent.name
    for module in _imports(path):
        top = module.partition(".")[0]
        if top == own or top not in ("agentflow", "serving", "workflows"):
            continue
        private = [part for part in module.split(".") if part.startswith("_")]
        assert not private, f"{own}/{path.name} imports the private {module}"


def test_the_four_parts_are_folders() -> None:
    for folder in ("agentflow", "agentflow/eval", "agentflow/cli", "serving", "workflows"):
        assert (ROOT / folder / "__init__.py").is_file(), folder
