"""The run database: what a ModelMine server did, written as it goes, read by the REST API.

SQLite in the run folder by default (``<out_dir>/run.db``); any SQLAlchemy URL works. Tables: runs,
events (every bus event, the ordered log the live stream resumes from), tasks, rounds, metrics
(per round, long format), nodes (per-miner statistics), selections, submissions (sizes and verdicts,
never update contents), blocks (candidate blocks), votes, reveals, rewards, stakes, transactions.

Contracts:
- :meth:`RunDB.record` stores one :class:`~fl_server.events.Event` of one run atomically: the raw
  event row plus its effect on the typed tables. It is what :meth:`RunDB.sink` subscribes to a bus.
- Wei amounts are stored as decimal strings (they overflow 64-bit integers).
- Several processes may share one SQLite file (WAL journal, busy timeout): a run subprocess writes,
  the API process reads.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from fl_server.events import Event, EventBus, jsonable

log = logging.getLogger("modelmine.rundb")

metadata = MetaData()
OFFLINE = frozenset({"dropped", "offline"})  # node statuses that do not count as online (others: online,
# active, probation, quarantined: connected, whatever the selection policy thinks of them)
MAX_REASON = 1000  # characters of a rejection reason kept (tracebacks from the network are long)


def _id() -> Column:
    return Column("id", Integer, primary_key=True, autoincrement=True)


runs = Table(
    "runs", metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # running | finished | failed | stopped
    Column("started_at", Float), Column("finished_at", Float),
    Column("dataset", String(64)), Column("model", String(64)),
    Column("rounds", Integer), Column("num_miners", Integer),
    Column("final_accuracy", Float), Column("error", Text),
    Column("out_dir", Text), Column("config", JSON),
)
events = Table(
    "events", metadata, _id(),
    Column("run_id", String(64), index=True), Column("kind", String(32), index=True),
    Column("ts", Float), Column("payload", JSON),
)
tasks = Table(
    "tasks", metadata, _id(),
    Column("run_id", String(64), index=True),
    Column("task_id", Integer),  # the task's id on chain (None for a request not yet published)
    Column("status", String(16)),  # requested | published | running | completed | failed | cancelled | refunded
    Column("source", String(16)),  # chain | request
    Column("dataset", String(64)), Column("rounds", Integer),
    Column("reward_pool_wei", String(80)), Column("contract", String(64)), Column("model_hash", String(80)),
    Column("created_at", Float), Column("updated_at", Float), Column("details", JSON),
)
rounds = Table(
    "rounds", metadata,
    Column("run_id", String(64), primary_key=True), Column("round", Integer, primary_key=True),
    Column("status", String(16)),  # running | finished
    Column("started_at", Float), Column("finished_at", Float),
    Column("accuracy", Float), Column("loss", Float), Column("round_seconds", Float),
    Column("upload_bytes_per_miner", Float), Column("selected", Integer), Column("received", Integer),
    Column("train_loss", Float), Column("record", JSON),
)
metrics = Table(
    "metrics", metadata, _id(),
    Column("run_id", String(64), index=True), Column("round", Integer),
    Column("name", String(64)), Column("value", Float),
)
nodes = Table(
    "nodes", metadata,
    Column("run_id", String(64), primary_key=True), Column("node_id", String(40), primary_key=True),
    Column("address", String(64)), Column("status", String(16)),  # online | dropped | quarantined | ...
    Column("first_seen", Float), Column("last_seen", Float),
    Column("latency_s", Float), Column("reliability", Float), Column("reputation", Float),
    Column("selections", Integer, default=0), Column("accepted", Integer, default=0),
    Column("rejected", Integer, default=0), Column("bytes_total", Integer, default=0),
    Column("stats", JSON),
)
selections = Table(
    "selections", metadata, _id(),
    Column("run_id", String(64), index=True), Column("round", Integer), Column("node_id", String(40)),
    Column("selected", Boolean), Column("score", Float), Column("reason", Text), Column("policy", String(32)),
)
submissions = Table(
    "submissions", metadata, _id(),
    Column("run_id", String(64), index=True), Column("round", Integer), Column("node_id", String(40)),
    Column("address", String(64)), Column("accepted", Boolean), Column("reason", Text),
    Column("bytes", Integer), Column("train_seconds", Float), Column("train_loss", Float), Column("ts", Float),
)
blocks = Table(
    "blocks", metadata, _id(),
    Column("run_id", String(64), index=True), Column("round", Integer),
    Column("task_id", Integer), Column("task_round", Integer), Column("model_hash", String(80)),
    Column("participants", JSON), Column("status", String(16)),  # proposed | finalized | rejected
    Column("accepts", Integer), Column("votes", Integer), Column("gas", Integer),
    Column("proposed_at", Float), Column("decided_at", Float),
)
votes = Table(
    "votes", metadata, _id(),
    Column("run_id", String(64), index=True), Column("round", Integer), Column("task_id", Integer),
    Column("task_round", Integer), Column("address", String(64)), Column("accept", Boolean),
    Column("accuracy_bps", Integer), Column("ts", Float),
)
reveals = Table(
    "reveals", metadata, _id(),
    Column("run_id", String(64), index=True), Column("round", Integer), Column("task_id", Integer),
    Column("task_round", Integer), Column("address", String(64)), Column("ok", Boolean), Column("ts", Float),
)
rewards = Table(
    "rewards", metadata, _id(),
    Column("run_id", String(64), index=True), Column("task_id", Integer), Column("round", Integer),
    Column("address", String(64), index=True), Column("amount_wei", String(80)),
    Column("kind", String(16)),  # earned | claimed | refund | fee | aggregator
    Column("ts", Float),
)
stakes = Table(
    "stakes", metadata, _id(),
    Column("run_id", String(64), index=True), Column("address", String(64), index=True),
    Column("amount_wei", String(80)), Column("action", String(16)), Column("ts", Float),
)
transactions = Table(
    "transactions", metadata, _id(),
    Column("run_id", String(64), index=True), Column("round", Integer), Column("function", String(64)),
    Column("gas", Integer), Column("tx_hash", String(80)), Column("status", String(16)),
    Column("sender", String(64)), Column("ts", Float),
)

TABLES = {t.name: t for t in metadata.sorted_tables}


def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _wei(value: Any) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "0"


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _node(value: Any) -> str | None:
    return None if value is None else str(value)


def row_dict(row: Any) -> dict[str, Any]:
    return jsonable(dict(row._mapping))


class RunDB:
    """Thread-safe access to one run database (create tables on open)."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        self._version = 0  # bumped by every write through this object (other processes write events)
        self._status_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    @classmethod
    def open(cls, url_or_path: str | Path) -> RunDB:
        """A URL (``sqlite:///...``, ``postgresql://...``) or a file path (SQLite)."""
        text = str(url_or_path)
        return cls(text if "://" in text else sqlite_url(text))

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ------------------------------------------------------------------------------
    def sink(self, run_id: str) -> Callable[[Event], None]:
        """A bus subscriber that stores every event of ``run_id``."""
        return lambda ev: self.record(run_id, ev)

    def attach(self, bus: EventBus, run_id: str) -> Callable[[], None]:
        return bus.subscribe(self.sink(run_id))

    def record(self, run_id: str, ev: Event) -> int:
        """Store ``ev`` for ``run_id`` and apply it to the typed tables; returns the event id."""
        payload = jsonable(ev.payload)
        with self.engine.begin() as conn:
            event_id = conn.execute(
                insert(events).values(run_id=run_id, kind=ev.kind, ts=ev.ts, payload=payload)
            ).inserted_primary_key[0]
            handler = _HANDLERS.get(ev.kind)
            if handler is not None:
                handler(conn, run_id, payload, ev.ts)
        self._version += 1
        return int(event_id)

    def start_run(self, run_id: str, **fields: Any) -> None:
        """Insert the run row (status running) unless it exists."""
        with self.engine.begin() as conn:
            _start_run(conn, run_id, jsonable(fields), time.time())
        self._version += 1

    def finish_run(self, run_id: str, status: str, error: str | None = None,
                   final_accuracy: float | None = None) -> None:
        """Close a run that is still marked running (the API does this when a run process dies); the
        change is also stored as a ``run_finished`` event, so live clients and other processes see it."""
        now = time.time()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(runs).where(and_(runs.c.id == run_id, runs.c.status == "running"))
                .values(status=status, finished_at=now, error=error, final_accuracy=final_accuracy)
            ).rowcount
            if changed:
                conn.execute(insert(events).values(run_id=run_id, kind="run_finished", ts=now, payload=jsonable(
                    {"status": status, "error": error, "final_accuracy": final_accuracy})))
        self._version += 1

    def add_task_request(self, details: dict[str, Any]) -> int:
        """Record a task a user asked to publish (status ``requested``); returns its row id."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(insert(tasks).values(
                run_id=None, task_id=None, status="requested", source="request",
                dataset=details.get("dataset"), rounds=details.get("rounds"),
                reward_pool_wei=_wei(details.get("reward_pool_wei")), created_at=now, updated_at=now,
                details=jsonable(details),
            ))
        self._version += 1
        return int(result.inserted_primary_key[0])

    def set_task_row(self, row_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(tasks).where(tasks.c.id == row_id).values(updated_at=time.time(), **values))
        self._version += 1

    # -- reading ------------------------------------------------------------------------------
    def _all(self, statement: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [row_dict(r) for r in conn.execute(statement)]

    def _one(self, statement: Any) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(statement).first()
            return row_dict(row) if row is not None else None

    def list_runs(self, limit: int = 100) -> list[dict[str, Any]]:
        cols = [c for c in runs.c if c.name != "config"]
        return self._all(select(*cols).order_by(runs.c.started_at.desc()).limit(limit))

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._one(select(runs).where(runs.c.id == run_id))

    def latest_run_id(self) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(runs.c.id).order_by(runs.c.started_at.desc()).limit(1)).scalar()

    def list_rounds(self, run_id: str) -> list[dict[str, Any]]:
        return self._all(select(rounds).where(rounds.c.run_id == run_id).order_by(rounds.c.round))

    def list_metrics(self, run_id: str, name: str | None = None) -> list[dict[str, Any]]:
        q = select(metrics.c.round, metrics.c.name, metrics.c.value).where(metrics.c.run_id == run_id)
        if name:
            q = q.where(metrics.c.name == name)
        return self._all(q.order_by(metrics.c.round, metrics.c.name))

    def list_nodes(self, run_id: str) -> list[dict[str, Any]]:
        return self._all(select(nodes).where(nodes.c.run_id == run_id).order_by(nodes.c.first_seen, nodes.c.node_id))

    def list_selections(self, run_id: str, node_id: str | None = None) -> list[dict[str, Any]]:
        q = select(selections).where(selections.c.run_id == run_id)
        if node_id is not None:
            q = q.where(selections.c.node_id == node_id)
        return self._all(q.order_by(selections.c.round, selections.c.node_id))

    def list_table(self, name: str, run_id: str | None = None, limit: int = 1000, **equals: Any) -> list[dict[str, Any]]:
        """Rows of one of the chain/submission tables, newest last, optionally filtered by columns."""
        table = TABLES[name]
        q = select(table)
        if run_id is not None:
            q = q.where(table.c.run_id == run_id)
        for column, value in equals.items():
            if value is not None:
                q = q.where(table.c[column] == value)
        return self._all(q.order_by(table.c.id).limit(limit))

    def list_tasks(self, status: str | None = None) -> list[dict[str, Any]]:
        q = select(tasks)
        if status:
            q = q.where(tasks.c.status == status)
        return self._all(q.order_by(tasks.c.created_at.desc()))

    def get_task(self, row_id: int) -> dict[str, Any] | None:
        return self._one(select(tasks).where(tasks.c.id == row_id))

    def events_after(self, after: int = 0, run_id: str | None = None, kinds: Iterable[str] | None = None,
                     limit: int = 500) -> list[dict[str, Any]]:
        q = select(events).where(events.c.id > after)
        if run_id is not None:
            q = q.where(events.c.run_id == run_id)
        if kinds is not None:
            q = q.where(events.c.kind.in_(list(kinds)))
        return self._all(q.order_by(events.c.id).limit(limit))

    def last_event_id(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(events.c.id))).scalar() or 0)

    def columns(self, name: str) -> set[str]:
        return set(TABLES[name].c.keys())

    def status(self, run_id: str | None = None) -> dict[str, Any]:
        """/api/status's body for ``run_id`` (default: the latest run), recomputed only when an event was
        stored (by any process) or this object wrote since the last call: one cheap query otherwise."""
        last = self.last_event_id()
        key = (run_id, last, self._version)
        cached = self._status_cache
        if cached is not None and cached[0] == key:
            return dict(cached[1])
        out: dict[str, Any] = {"run": None, "round": 0, "rounds": None, "finished_rounds": 0, "accuracy": None,
                               "loss": None, "nodes": {"total": 0, "online": 0, "by_status": {}}, "task": None}
        rid = run_id or self.latest_run_id()
        if rid is not None:
            out.update(self.run_status(rid))
        out["last_event_id"] = last
        self._status_cache = (key, out)
        return dict(out)

    def run_status(self, run_id: str) -> dict[str, Any]:
        """What /api/status shows for one run: a few indexed queries, no full scans of big tables."""
        with self.engine.connect() as conn:
            run = conn.execute(select(*[c for c in runs.c if c.name != "config"]).where(runs.c.id == run_id)).first()
            last = conn.execute(select(rounds).where(and_(rounds.c.run_id == run_id, rounds.c.status == "finished"))
                                .order_by(rounds.c.round.desc()).limit(1)).first()
            current = conn.execute(select(func.max(rounds.c.round)).where(rounds.c.run_id == run_id)).scalar()
            counts = dict(conn.execute(select(nodes.c.status, func.count()).where(nodes.c.run_id == run_id)
                                       .group_by(nodes.c.status)).all())
            task = conn.execute(select(tasks.c.id, tasks.c.task_id, tasks.c.status).where(tasks.c.run_id == run_id)
                                .order_by(tasks.c.id.desc()).limit(1)).first()
        return jsonable({
            "run": dict(run._mapping) if run else None,
            "round": int(current or 0),
            "rounds": run.rounds if run else None,
            "finished_rounds": last.round if last else 0,
            "accuracy": last.accuracy if last else None,
            "loss": last.loss if last else None,
            "nodes": {"total": sum(counts.values()), "by_status": counts,
                      "online": sum(n for status, n in counts.items() if status not in OFFLINE)},
            "task": dict(task._mapping) if task else None,
        })

    def task_timeline(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        """The lifecycle of a task: its stored events (published, rounds, blocks, votes, reveals,
        rewards, refunds, status changes) in order; a requested task has just its request."""
        if task.get("run_id") is None:
            return [{"kind": "task_requested", "ts": task.get("created_at"), "payload": task.get("details") or {}}]
        kinds = ("task_published", "task_status", "round_started", "round_finished", "candidate_block",
                 "vote", "reveal", "block_finalized", "block_rejected", "reward", "run_finished")
        rows = self.events_after(0, task["run_id"], kinds, limit=10000)
        tid = task.get("task_id")
        return [r for r in rows if tid is None or (r["payload"] or {}).get("task_id", tid) == tid]

    def miner_addresses(self) -> list[dict[str, Any]]:
        """Every miner address seen in submissions, votes, rewards or stakes (all runs)."""
        seen: set[str] = set()
        with self.engine.connect() as conn:
            for table in (submissions, votes, rewards, stakes):
                seen |= {a for (a,) in conn.execute(select(table.c.address).distinct()) if a}
        return [{"address": a} for a in sorted(seen)]

    def miner_view(self, address: str) -> dict[str, Any] | None:
        """A miner's view: tasks joined, stake, pending reveals, rewards earned and claimable."""
        addr = address.lower()
        subs = [s for s in self._all(select(submissions).where(func.lower(submissions.c.address) == addr))]
        my_votes = self._all(select(votes).where(func.lower(votes.c.address) == addr))
        my_reveals = self._all(select(reveals).where(func.lower(reveals.c.address) == addr))
        my_rewards = self._all(select(rewards).where(func.lower(rewards.c.address) == addr))
        bal = [b for b in self.balances() if b["address"].lower() == addr]
        if not (subs or my_votes or my_rewards or bal):
            return None
        run_ids = sorted({s["run_id"] for s in subs} | {v["run_id"] for v in my_votes})
        joined = self._all(select(tasks).where(tasks.c.run_id.in_(run_ids))) if run_ids else []
        revealed = {(r["run_id"], r["round"]) for r in my_reveals}
        decided = {(b["run_id"], b["round"]): b["status"] for b in self._all(select(blocks))}
        pending = [v for v in my_votes if (v["run_id"], v["round"]) not in revealed
                   and decided.get((v["run_id"], v["round"])) != "rejected"]
        zero = {"earned_wei": "0", "claimed_wei": "0", "claimable_wei": "0", "refund_wei": "0", "stake_wei": "0"}
        return {
            "address": address, **(bal[0] if bal else zero), "address_checksum": bal[0]["address"] if bal else address,
            "tasks_joined": joined, "runs": run_ids, "submissions": len(subs),
            "accepted": sum(1 for s in subs if s["accepted"]), "votes": len(my_votes),
            "pending_reveals": pending, "rewards": my_rewards,
        }

    def balances(self, address: str | None = None) -> list[dict[str, Any]]:
        """Per address: earned, claimed, claimable (= earned - claimed), refunds, stake (all wei strings)."""
        acc: dict[str, dict[str, int]] = {}
        for row in self._all(select(rewards.c.address, rewards.c.kind, rewards.c.amount_wei)):
            entry = acc.setdefault(row["address"], {})
            entry[row["kind"]] = entry.get(row["kind"], 0) + int(row["amount_wei"] or 0)
        for row in self._all(select(stakes.c.address, stakes.c.action, stakes.c.amount_wei)):
            entry = acc.setdefault(row["address"], {})
            sign = 1 if row["action"] == "staked" else -1
            entry["stake"] = entry.get("stake", 0) + sign * int(row["amount_wei"] or 0)
        out = []
        for addr, entry in sorted(acc.items(), key=lambda kv: kv[0] or ""):
            if address is not None and (addr or "").lower() != address.lower():
                continue
            earned, claimed = entry.get("earned", 0), entry.get("claimed", 0)
            out.append({
                "address": addr, "earned_wei": str(earned), "claimed_wei": str(claimed),
                "claimable_wei": str(max(earned - claimed, 0)), "refund_wei": str(entry.get("refund", 0)),
                "stake_wei": str(max(entry.get("stake", 0), 0)),
            })
        return out


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# -- event handlers: (connection, run id, payload, ts) -> effect on the typed tables -------------------
def _start_run(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    """Insert the run, or fill in what an existing row (made by the API's run manager) lacks."""
    values = {k: p.get(k) for k in ("dataset", "model", "rounds", "num_miners", "out_dir", "config")}
    values = {k: v for k, v in values.items() if v is not None}
    if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is not None:
        conn.execute(update(runs).where(runs.c.id == run_id).values(**values))
        return
    conn.execute(insert(runs).values(id=run_id, status="running", started_at=ts, **values))


def _finish_run(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    conn.execute(update(runs).where(runs.c.id == run_id).values(
        status=p.get("status", "finished"), finished_at=ts, final_accuracy=_float(p.get("final_accuracy")),
        error=p.get("error"),
    ))


def _upsert_node(conn: Connection, run_id: str, node_id: Any, ts: float, **values: Any) -> None:
    node = _node(node_id)
    if node is None:
        return
    key = and_(nodes.c.run_id == run_id, nodes.c.node_id == node)
    existing = conn.execute(select(nodes).where(key)).first()
    values = {k: v for k, v in values.items() if v is not None}
    if existing is None:
        base = {"selections": 0, "accepted": 0, "rejected": 0, "bytes_total": 0, "status": "online"}
        conn.execute(insert(nodes).values(run_id=run_id, node_id=node, first_seen=ts, last_seen=ts, **(base | values)))
    else:
        conn.execute(update(nodes).where(key).values(last_seen=ts, **values))


def _bump_node(conn: Connection, run_id: str, node_id: Any, ts: float, **increments: int) -> None:
    _upsert_node(conn, run_id, node_id, ts)
    key = and_(nodes.c.run_id == run_id, nodes.c.node_id == _node(node_id))
    conn.execute(update(nodes).where(key).values(**{k: nodes.c[k] + v for k, v in increments.items()}))


def _reliability(conn: Connection, run_id: str, node_id: Any) -> None:
    """Reliability = accepted submissions / selections, unless a selection policy reported its own."""
    key = and_(nodes.c.run_id == run_id, nodes.c.node_id == _node(node_id))
    row = conn.execute(select(nodes.c.selections, nodes.c.accepted, nodes.c.stats).where(key)).first()
    if row is None or (row.stats or {}).get("reliability_from_policy"):
        return
    if row.selections:
        conn.execute(update(nodes).where(key).values(reliability=min(row.accepted / row.selections, 1.0)))


def _round_started(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    r = int(p.get("round", 0))
    key = and_(rounds.c.run_id == run_id, rounds.c.round == r)
    if conn.execute(select(rounds.c.round).where(key)).first() is None:
        conn.execute(insert(rounds).values(run_id=run_id, round=r, status="running", started_at=ts))
    for node in p.get("available") or []:
        _upsert_node(conn, run_id, node, ts)


def _round_finished(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    rec = dict(p.get("record") or {})
    r = int(p.get("round", rec.get("round", 0)))
    values = {
        "status": "finished", "finished_at": ts, "record": rec,
        **{k: rec.get(k) for k in ("accuracy", "loss", "round_seconds", "upload_bytes_per_miner",
                                   "selected", "received", "train_loss")},
    }
    key = and_(rounds.c.run_id == run_id, rounds.c.round == r)
    if conn.execute(select(rounds.c.round).where(key)).first() is None:
        conn.execute(insert(rounds).values(run_id=run_id, round=r, started_at=ts, **values))
    else:
        conn.execute(update(rounds).where(key).values(**values))
    rows = [{"run_id": run_id, "round": r, "name": k, "value": float(v)} for k, v in rec.items()
            if k != "round" and isinstance(v, int | float) and not isinstance(v, bool)]
    if rows:
        conn.execute(insert(metrics), rows)


def _selection(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    selected = {str(n) for n in p.get("selected") or []}
    available = [str(n) for n in p.get("available") or []] or sorted(selected)
    scores, reasons = p.get("scores") or {}, p.get("reasons") or {}
    rows = [{"run_id": run_id, "round": p.get("round"), "node_id": n, "selected": n in selected,
             "score": _float(scores.get(n)), "reason": reasons.get(n), "policy": p.get("policy")}
            for n in available]
    if rows:
        conn.execute(insert(selections), rows)
    for n in available:
        _upsert_node(conn, run_id, n, ts)
    for n in selected:
        _bump_node(conn, run_id, n, ts, selections=1)
        _reliability(conn, run_id, n)


def _node_status(status: str) -> Callable[[Connection, str, dict[str, Any], float], None]:
    def handler(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
        _upsert_node(conn, run_id, p.get("node_id"), ts, status=status)
    return handler


def _node_stats(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    node = p.get("node_id")
    known = {"latency_s": _float(p.get("latency_s")), "reliability": _float(p.get("reliability")),
             "reputation": _float(p.get("reputation")), "address": p.get("address"), "status": p.get("status")}
    extra = {k: v for k, v in p.items() if k not in {"node_id", *known}}
    if known["reliability"] is not None:
        extra["reliability_from_policy"] = True
    _upsert_node(conn, run_id, node, ts, **known)
    if extra:
        key = and_(nodes.c.run_id == run_id, nodes.c.node_id == _node(node))
        old = conn.execute(select(nodes.c.stats).where(key)).scalar() or {}
        conn.execute(update(nodes).where(key).values(stats={**old, **extra}))


def _submission(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    accepted = bool(p.get("accepted"))
    size = int(p.get("bytes") or 0)
    conn.execute(insert(submissions).values(
        run_id=run_id, round=p.get("round"), node_id=_node(p.get("node_id")), address=p.get("address"),
        accepted=accepted, reason=str(p["reason"])[:MAX_REASON] if p.get("reason") else None, bytes=size, train_seconds=_float(p.get("train_seconds")),
        train_loss=_float(p.get("train_loss")), ts=ts,
    ))
    node = p.get("node_id")
    _bump_node(conn, run_id, node, ts, **({"accepted": 1, "bytes_total": size} if accepted else {"rejected": 1}))
    _upsert_node(conn, run_id, node, ts, address=p.get("address"), latency_s=_float(p.get("train_seconds")))
    _reliability(conn, run_id, node)


def _task_published(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    conn.execute(insert(tasks).values(
        run_id=run_id, task_id=p.get("task_id"), status="published", source="chain", dataset=p.get("dataset"),
        rounds=p.get("rounds"), reward_pool_wei=_wei(p.get("reward_pool_wei")), contract=p.get("contract"),
        model_hash=p.get("model_hash"), created_at=ts, updated_at=ts, details=p,
    ))


def _task_status(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    conn.execute(update(tasks).where(and_(tasks.c.run_id == run_id, tasks.c.task_id == p.get("task_id")))
                 .values(status=p.get("status"), updated_at=ts))


def _candidate(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    conn.execute(insert(blocks).values(
        run_id=run_id, round=p.get("round"), task_id=p.get("task_id"), task_round=p.get("task_round"),
        model_hash=p.get("model_hash"), participants=p.get("participants") or [], status="proposed",
        gas=p.get("gas"), proposed_at=ts,
    ))


def _decided(status: str) -> Callable[[Connection, str, dict[str, Any], float], None]:
    def handler(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
        key = and_(blocks.c.run_id == run_id, blocks.c.round == p.get("round"), blocks.c.status == "proposed")
        values = {"status": status, "accepts": p.get("accepts"), "votes": p.get("votes"), "decided_at": ts}
        if p.get("gas") is not None:
            values["gas"] = p.get("gas")
        if conn.execute(update(blocks).where(key).values(**values)).rowcount == 0:
            conn.execute(insert(blocks).values(
                run_id=run_id, round=p.get("round"), task_id=p.get("task_id"), task_round=p.get("task_round"),
                model_hash=p.get("model_hash"), participants=[], proposed_at=ts, **values,
            ))
    return handler


def _vote(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    conn.execute(insert(votes).values(
        run_id=run_id, round=p.get("round"), task_id=p.get("task_id"), task_round=p.get("task_round"),
        address=p.get("address"), accept=bool(p.get("accept")), accuracy_bps=p.get("accuracy_bps"), ts=ts,
    ))


def _reveal(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    conn.execute(insert(reveals).values(
        run_id=run_id, round=p.get("round"), task_id=p.get("task_id"), task_round=p.get("task_round"),
        address=p.get("address"), ok=bool(p.get("ok", True)), ts=ts,
    ))


def _reward(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    conn.execute(insert(rewards).values(
        run_id=run_id, task_id=p.get("task_id"), round=p.get("round"), address=p.get("address"),
        amount_wei=_wei(p.get("amount_wei")), kind=p.get("kind", "earned"), ts=ts,
    ))


def _stake(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    conn.execute(insert(stakes).values(
        run_id=run_id, address=p.get("address"), amount_wei=_wei(p.get("amount_wei")),
        action=p.get("action", "staked"), ts=ts,
    ))


def _transaction(conn: Connection, run_id: str, p: dict[str, Any], ts: float) -> None:
    conn.execute(insert(transactions).values(
        run_id=run_id, round=p.get("round"), function=p.get("function"), gas=p.get("gas"),
        tx_hash=p.get("tx_hash"), status=p.get("status", "ok"), sender=p.get("from"), ts=ts,
    ))


_HANDLERS: dict[str, Callable[[Connection, str, dict[str, Any], float], None]] = {
    "run_started": _start_run,
    "run_finished": _finish_run,
    "task_published": _task_published,
    "task_status": _task_status,
    "round_started": _round_started,
    "round_finished": _round_finished,
    "selection": _selection,
    "node_joined": _node_status("online"),
    "node_dropped": _node_status("dropped"),
    "node_stats": _node_stats,
    "submission": _submission,
    "candidate_block": _candidate,
    "block_finalized": _decided("finalized"),
    "block_rejected": _decided("rejected"),
    "vote": _vote,
    "reveal": _reveal,
    "reward": _reward,
    "stake": _stake,
    "transaction": _transaction,
}


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value))
