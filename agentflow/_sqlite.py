"""The one way agentflow opens a SQLite file (checkpoints, the answer store, the response cache).

Autocommit (`isolation_level=None`: a write is on disk when the call returns, and a multi-statement
write says BEGIN/COMMIT itself), the WAL journal (readers never block the writer, and a killed
process leaves the last committed state), `synchronous=NORMAL` (safe with WAL), a busy timeout for
a second process writing the same file, and the parent folder created. ":memory:" is a throwaway
database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["BUSY_TIMEOUT_S", "connect"]

BUSY_TIMEOUT_S = 30.0
"""How long a write waits for another connection's write to finish before `sqlite3.OperationalError`."""


def connect(path: Path | str, *, any_thread: bool = False, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open (creating it and its folder) the database at `path`, set up as the module doc says.

    `any_thread=True` lets other threads use the connection (the caller then serialises access with
    a lock). Raises `sqlite3.Error` or `OSError`; callers turn them into their own AgentFlowError.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=timeout, check_same_thread=not any_thread)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn
