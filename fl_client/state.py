"""The miner daemon's persistent state: which tasks it saw, joined or skipped (and why), what it staked,
which reveals it still owes, what rewards it claimed, and the last chain block it processed.

One JSON file ``<miner dir>/daemon/state.json``, rewritten atomically (temporary file, fsync,
rename) after every change, so a daemon killed at any instant restarts from a consistent state and
never joins, stakes or claims twice. No secret is stored here (keys stay in ``keys/``; commitment
openings stay with the ClientApp's MinerState, 0600).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1


@dataclass
class TaskRecord:
    """One task as this miner knows it."""

    task_id: int
    status: str  # seen | skipped | joined | running | finished | failed
    reason: str = ""
    model_hash: str = ""
    spec_hash: str = ""
    joined_block: int = 0
    staked_wei: int = 0
    reveals_sent: list[int] = field(default_factory=list)  # rounds this miner revealed itself
    rewards_claimed_wei: int = 0
    supernode_restarts: int = 0
    child_pids: list[int] = field(default_factory=list)  # SuperNode and app guard, to reap after a crash


@dataclass
class DaemonState:
    last_block: int = -1  # last block whose TaskPublished events were handled
    registered: bool = False
    tasks: dict[int, TaskRecord] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_json(self) -> str:
        raw = asdict(self)
        raw["tasks"] = {str(k): v for k, v in raw["tasks"].items()}
        return json.dumps(raw, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DaemonState:
        raw: dict[str, Any] = json.loads(text)
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"state version {raw.get('version')} is not {STATE_VERSION}")
        tasks = {int(k): TaskRecord(**v) for k, v in raw.get("tasks", {}).items()}
        return cls(last_block=int(raw["last_block"]), registered=bool(raw["registered"]), tasks=tasks)


class StateStore:
    """Load and atomically save :class:`DaemonState` in ``folder/daemon/state.json``."""

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder) / "daemon"
        self.path = self.dir / "state.json"
        self._lock = threading.Lock()

    def load(self) -> DaemonState:
        """The saved state, or a fresh one. A corrupt file is kept aside (``state.json.corrupt``)
        and the daemon starts afresh from the chain (joins are idempotent on chain)."""
        if not self.path.exists():
            return DaemonState()
        try:
            return DaemonState.from_json(self.path.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_suffix(".json.corrupt")
            os.replace(self.path, aside)
            raise StateCorrupt(f"{self.path} was unreadable ({exc}); moved to {aside}") from exc

    def save(self, state: DaemonState) -> None:
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".state-")
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(state.to_json())
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


class StateCorrupt(RuntimeError):
    """The state file could not be read; it was moved aside."""
