"""The curated public API: what `import agentflow` offers is deliberate, documented and typed."""

from __future__ import annotations

import inspect

import agentflow
import workflows
from agentflow import AgentFlowError


def test_every_public_name_exists_once_and_is_documented() -> None:
    names = agentflow.__all__
    assert len(names) == len(set(names))
    for name in names:
        obj = getattr(agentflow, name)
        assert not name.startswith("_"), name
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"


def test_nothing_private_leaks_into_the_namespace() -> None:
    public = {n for n in vars(agentflow) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(agentflow, n))}
    # Submodules that Python binds on import (cli, testing) are the only public names outside __all__.
    assert public - set(agentflow.__all__) - modules == set()
    assert modules <= {"cli", "testing"}


def test_every_error_is_in_one_tree() -> None:
    errors = [getattr(agentflow, n) for n in agentflow.__all__ if n.endswith(("Error", "Exceeded"))]
    assert len(errors) > 10
    for err in errors:
        assert issubclass(err, AgentFlowError), err.__name__


def test_workflows_use_the_public_api_only() -> None:
    import ast
    from pathlib import Path

    for path in Path(workflows.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentflow"):
                assert node.module == "agentflow", f"{path.name} imports from {node.module}"
