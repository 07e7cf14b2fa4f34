"""The `agentflow` command line: the one place where the core, evaluation, serving and workflows meet.

Commands are registered here, explicitly: `models`, `serve`, `ask` (models), `graph`, `calibrate`,
`compare` (graphs and evaluation). The environment is read only in this package.
"""

from __future__ import annotations

from . import _core, _eval
from ._app import Command, app, main

__all__ = ["app", "main"]

for _command in (_core.models, _core.serve, _core.ask, _eval.graph, _eval.calibrate, _eval.compare):
    app.command(cls=Command)(_command)
