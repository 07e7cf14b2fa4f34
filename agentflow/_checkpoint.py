"""Checkpoint stores: where a run saves itself after each step so that it can resume after a crash.

A `Checkpoint` holds the state after the last completed step (as JSON-able data), the nodes that run next,
partly-filled joins, and the updates of nodes that already finished inside a fan-out step
that did not complete. Resuming from it runs no completed node again and loses no completed update.

Two stores ship: `MemoryCheckpointer` (tests, retries inside one process) and `SqliteCheckpointer(path)`
(stdlib sqlite3, WAL journal: survives the process being killed). `save_run` / `restore_run` turn the
engine's run into a checkpoint and back.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from . import _sqlite
from ._events import StepRecord
from ._exceptions import CheckpointError
from ._graph_plan import Overwrite, decode_update
from ._types import Usage

if TYPE_CHECKING:
    from ._engine import RunState

__all__ = ["Checkpoint", "CheckpointStore", "MemoryCheckpointer", "SqliteCheckpointer"]

Status = Literal["running", "done", "error"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A run as it stood after `step` steps. `new_steps` are the steps finished since the previous save;
    a store appends them, and `load()` returns every step of the run in `new_steps` (visit counts are
    rebuilt from them, so a save costs the same at step 1,000 as at step 1)."""

    run_id: str
    graph: str
    step: int
    state: dict[str, Any]
    frontier: tuple[str, ...]
    arrivals: dict[str, list[str]]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_steps: tuple[StepRecord, ...] = ()
    usage: Usage = field(default_factory=Usage)
    status: Status = "running"

    def to_json(self) -> str:
        """The checkpoint as one JSON object (without `new_steps`, which a store keeps apart)."""
        return _ADAPTER.dump_json(self, exclude={"new_steps"}).decode()

    @staticmethod
    def from_json(text: str, steps: tuple[StepRecord, ...]) -> Checkpoint:
        return replace(_ADAPTER.validate_json(text), new_steps=steps)


_ADAPTER: TypeAdapter[Checkpoint] = TypeAdapter(Checkpoint)


@runtime_checkable
class CheckpointStore(Protocol):
    """Where checkpoints live. `save` replaces the run's checkpoint and appends its new steps."""

    async def save(self, checkpoint: Checkpoint) -> None: ...

    async def load(self, run_id: str) -> Checkpoint | None: ...


class MemoryCheckpointer:
    """Checkpoints in a dict: for tests and for resuming within one process."""

    def __init__(self) -> None:
        self._latest: dict[str, Checkpoint] = {}
        self._steps: dict[str, list[StepRecord]] = {}
        self.saves = 0

    async def save(self, checkpoint: Checkpoint) -> None:
        self.saves += 1
        self._steps.setdefault(checkpoint.run_id, []).extend(checkpoint.new_steps)
        self._latest[checkpoint.run_id] = checkpoint

    async def load(self, run_id: str) -> Checkpoint | None:
        cp = self._latest.get(run_id)
        if cp is None:
            return None
        return replace(cp, new_steps=tuple(self._steps.get(run_id, ())))

    def runs(self) -> list[str]:
        return sorted(self._latest)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS agentflow_checkpoints (run_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agentflow_steps (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, node TEXT NOT NULL, step INTEGER NOT NULL, visit INTEGER NOT NULL,
    start_s REAL NOT NULL, duration_s REAL NOT NULL, attempts INTEGER NOT NULL,
    requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""


class SqliteCheckpointer:
    """Checkpoints in a SQLite file (stdlib sqlite3, WAL). Each save is one transaction, so a run killed
    at any moment leaves either the old checkpoint or the new one, never half of one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = _sqlite.connect(self.path, any_thread=True)  # the lock below serialises access
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise CheckpointError(
                f"cannot open checkpoint database {str(self.path)!r}: {e}; pass a writable file path"
            ) from e
        self._seq: dict[str, int] = {}

    def _next_seq(self, run_id: str) -> int:
        seq = self._seq.get(run_id)
        if seq is None:
            row = self._db.execute("SELECT COALESCE(MAX(seq), -1) FROM agentflow_steps WHERE run_id=?", (run_id,))
            seq = int(row.fetchone()[0]) + 1
        return seq

    async def save(self, checkpoint: Checkpoint) -> None:
        rid = checkpoint.run_id
        try:
            data = checkpoint.to_json()
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"run {rid!r}: checkpoint is not JSON-serialisable ({e}); keep state fields JSON-friendly "
                "(pydantic models, lists, dicts, str, numbers)"
            ) from e
        with self._lock:
            try:
                seq = self._next_seq(rid)
                self._db.execute("BEGIN")
                if checkpoint.new_steps:
                    self._db.executemany(
                        "INSERT INTO agentflow_steps VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        [
                            (rid, seq + i, *s[:6], s.usage.requests, s.usage.prompt_tokens, s.usage.completion_tokens)
                            for i, s in enumerate(checkpoint.new_steps)
                        ],
                    )
                self._db.execute("INSERT OR REPLACE INTO agentflow_checkpoints VALUES (?, ?)", (rid, data))
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise CheckpointError(f"run {rid!r}: cannot write checkpoint to {str(self.path)!r}: {e}") from e
            self._seq[rid] = seq + len(checkpoint.new_steps)

    async def load(self, run_id: str) -> Checkpoint | None:
        with self._lock:
            try:
                row = self._db.execute("SELECT data FROM agentflow_checkpoints WHERE run_id=?", (run_id,)).fetchone()
                if row is None:
                    return None
                steps = tuple(
                    StepRecord(r[0], r[1], r[2], r[3], r[4], r[5], Usage(r[6], r[7], r[8]))
                    for r in self._db.execute(
                        "SELECT node, step, visit, start_s, duration_s, attempts, requests, prompt_tokens, "
                        "completion_tokens FROM agentflow_steps "
                        "WHERE run_id=? ORDER BY seq",
                        (run_id,),
                    )
                )
            except sqlite3.Error as e:
                raise CheckpointError(f"run {run_id!r}: cannot read checkpoint from {str(self.path)!r}: {e}") from e
        try:
            return Checkpoint.from_json(str(row[0]), steps)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"run {run_id!r}: the stored checkpoint in {str(self.path)!r} is corrupt ({e}); "
                "start the run again with a new run_id"
            ) from e

    def runs(self) -> list[str]:
        with self._lock:
            return [str(r[0]) for r in self._db.execute("SELECT run_id FROM agentflow_checkpoints ORDER BY run_id")]

    def close(self) -> None:
        self._db.close()


# --- saving and restoring a run (called by the engine) ----------------------------------------------


async def save_run(
    run: RunState,
    state: BaseModel,
    frontier: tuple[str, ...],
    done: dict[str, dict[str, Any]],
    new_steps: tuple[StepRecord, ...] = (),
    status: Status = "running",
) -> None:
    """Save `run` as it stands: `state` after its last step, the `frontier` to run next, the updates of
    nodes already `done` in an unfinished fan-out step, and the steps finished since the last save."""
    store = run.store
    assert store is not None
    try:
        data = state.model_dump(mode="json")
        done_data = {k: {"overwrite": type(v) is Overwrite, "update": to_jsonable_python(v)} for k, v in done.items()}
    except (PydanticSerializationError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"run {run.run_id!r}: cannot checkpoint the state ({e}); keep state fields JSON-serialisable "
            "(pydantic models, lists, dicts, str, numbers) or run without a checkpointer"
        ) from e
    await store.save(
        Checkpoint(
            run_id=run.run_id,
            graph=run.plan.name,
            step=run.step,
            state=data,
            frontier=frontier,
            arrivals={k: sorted(v) for k, v in run.arrivals.items()},
            done=done_data,
            new_steps=new_steps,
            usage=run.bus.usage,
            status=status,
        )
    )


def restore_run(run: RunState, cp: Checkpoint) -> tuple[BaseModel, tuple[str, ...], dict[str, dict[str, Any]]]:
    """Put `run` back where checkpoint `cp` left it; returns its state, frontier and finished updates."""
    plan = run.plan
    unknown = [n for n in (*cp.frontier, *cp.done) if n not in plan.nodes]
    if cp.graph != plan.name or unknown:
        raise CheckpointError(
            f"run {cp.run_id!r} was checkpointed by graph {cp.graph!r}"
            + (f" with nodes {unknown} that this graph lacks" if unknown else "")
            + f", not by {plan.name!r}: resume it with the graph that started it, or use a new run_id"
        )
    try:
        state = plan.state_cls.model_validate(cp.state)
    except ValidationError as e:
        raise CheckpointError(
            f"run {cp.run_id!r}: the checkpointed state no longer validates as {plan.state_cls.__name__} ({e}); "
            "the state model changed since the run started: restore it, or start a new run"
        ) from e
    run.record.steps.extend(cp.new_steps)
    run.record.resumed_from_step = cp.step
    visits: dict[str, int] = {}
    for s in cp.new_steps:
        if s.node in plan.nodes:  # not the "sub/node" steps of subgraphs
            visits[s.node] = visits.get(s.node, 0) + 1
    for name in cp.done:  # finished inside the interrupted step, which runs again (without them)
        visits[name] -= 1
    run.visits = visits
    run.arrivals = {k: set(v) for k, v in cp.arrivals.items()}
    run.step = cp.step
    run.bus.usage = cp.usage
    done: dict[str, dict[str, Any]] = {}
    for name, saved in cp.done.items():
        update = decode_update(plan, saved["update"])
        done[name] = Overwrite(update) if saved["overwrite"] else update
    return state, cp.frontier, done
