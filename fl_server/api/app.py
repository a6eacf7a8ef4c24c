"""The FastAPI application: read endpoints over the run database, run control, task requests, a
Server-Sent Events stream and the static dashboard. OpenAPI at /docs.

Auth: GET endpoints are open to loopback clients; other clients need the bearer token. Every
state-changing endpoint needs the bearer token (``Authorization: Bearer <token>``); with no token
configured they answer 403. Errors are JSON objects ``{"error": "<message>", "status": <code>}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from fl_server.api.runs import REPO_ROOT, RunConflict, RunManager, RunRequest, config_options
from fl_server.rundb import RunDB

# the static files; a Flower App bundle copies only the Python sources, so fall back to the checkout
DASHBOARD_DIR = next((d for d in (Path(__file__).resolve().parents[1] / "dashboard", REPO_ROOT / "fl_server" / "dashboard")
                      if (d / "index.html").is_file()), REPO_ROOT / "fl_server" / "dashboard")
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
STREAM_POLL_S = 0.5
HEARTBEAT_S = 15.0
PUBLISH_TIMEOUT_S = 180
PROFILE_KEYS = ("rpc_url", "contract", "store_url", "aggregator", "aggregator_secagg_public",
                "publisher_secagg_public", "publisher_key_file")
CHAIN_TABLES = ("blocks", "votes", "reveals", "rewards", "stakes", "transactions", "submissions")


def load_publisher_profile(path: Path) -> dict[str, str]:
    """A publisher profile: JSON object with ``PROFILE_KEYS`` (and optional ``store_token_file``) naming
    the deployment scripts/publish_task.py publishes to. Raises ValueError naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read publisher profile {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"publisher profile {path} must be a JSON object")
    missing = [k for k in PROFILE_KEYS if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise ValueError(f"publisher profile {path} lacks {', '.join(missing)}")
    if not Path(data["publisher_key_file"]).is_file():
        raise ValueError(f"publisher profile {path}: publisher_key_file {data['publisher_key_file']} does not exist")
    return {k: str(v) for k, v in data.items()}


def profile_args(profile: dict[str, str], secret_out: Path) -> list[str]:
    """publish_task.py flags for the deployment of ``profile`` (the key stays in its file)."""
    args = [f"--{key.replace('_', '-')}" if i % 2 == 0 else profile[key]
            for key in PROFILE_KEYS for i in range(2)]
    if profile.get("store_token_file"):
        args += ["--store-token-file", profile["store_token_file"]]
    return args + ["--secret-out", str(secret_out)]


class LoopbackReads:
    """ASGI middleware: /api/* from a non-loopback client needs the bearer token (401 otherwise); every
    response carries ``Server-Timing: app;dur=<ms>`` (the server's own time, for scripts/bench_api.py).
    Plain ASGI, not BaseHTTPMiddleware: no extra task or stream per request."""

    def __init__(self, app: Any, loopback: frozenset[str], token_ok: Any) -> None:
        self.app, self.loopback, self.token_ok = app, loopback, token_ok

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        client = scope.get("client")
        remote = (client[0] if client else "") not in self.loopback
        if scope["path"].startswith("/api") and remote and not self.token_ok(Request(scope)):
            response = JSONResponse({"error": "the API is open on loopback only; send Authorization: Bearer "
                                     "<token>", "status": 401}, 401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1000
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"server-timing", f"app;dur={ms:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, timed_send)


class ApiError(HTTPException):
    """An error answered as ``{"error": message}``."""


class TaskRequest(BaseModel):
    """A task to publish (the publish form)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(..., description="conf/dataset option")
    model: str = Field("cnn_small", description="conf/model option")
    rounds: int = Field(10, ge=1, le=1000)
    reward_eth: float = Field(1.0, gt=0, le=1_000_000)
    deadline_hours: float = Field(24.0, gt=0, le=24 * 365)
    target_accuracy: float = Field(0.95, gt=0, le=1)
    description: str = Field("", max_length=500)


def create_app(db: RunDB, token: str | None = None, runs_dir: Path | None = None,
               publisher_script: Path | None = None, publisher_profile: dict[str, str] | None = None,
               loopback: frozenset[str] = LOOPBACK) -> FastAPI:
    """Build the API over ``db``. ``token`` guards writes; ``runs_dir`` is where started runs write;
    ``publisher_profile`` (see :func:`load_publisher_profile`) lets POST /api/tasks publish on chain."""
    app = FastAPI(title="ModelMine API", version="1", description="Runs, rounds, nodes, chain, live stream.")
    runs_dir = Path(runs_dir) if runs_dir is not None else REPO_ROOT / "outputs" / "api_runs"
    manager = RunManager(db, runs_dir)
    publisher = publisher_script if publisher_script is not None else REPO_ROOT / "scripts" / "publish_task.py"
    profile = publisher_profile
    app.state.db, app.state.manager = db, manager

    # -- errors -------------------------------------------------------------------------------
    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs"
        return JSONResponse({"error": message, "status": exc.status_code}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            message = str(err.get("msg", "")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        return JSONResponse({"error": "invalid request: " + "; ".join(problems), "status": 422}, 422)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}", "status": 500}, 500)

    # -- auth ---------------------------------------------------------------------------------
    def token_ok(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token or "")

    app.add_middleware(LoopbackReads, loopback=loopback, token_ok=token_ok)

    def require_token(request: Request) -> None:
        if not token:
            raise ApiError(403, "state-changing endpoints are disabled: no API token configured "
                                "(set MODELMINE_API_TOKEN or dashboard.token_file and restart)")
        if not request.headers.get("authorization"):
            raise ApiError(401, "this endpoint needs Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
        if not token_ok(request):
            raise ApiError(401, "invalid API token", {"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_token)]

    # -- helpers ------------------------------------------------------------------------------
    def run_or_latest(run_id: str | None) -> str | None:
        if run_id:
            if db.get_run(run_id) is None:
                raise ApiError(404, f"no run '{run_id}'; list runs at /api/runs")
            return run_id
        return db.latest_run_id()

    def need_run(run_id: str | None) -> str:
        rid = run_or_latest(run_id)
        if rid is None:
            raise ApiError(404, "no runs recorded yet; start one (POST /api/runs) or run python -m fl_server")
        return rid

    # -- health and status ----------------------------------------------------------------------
    @app.get("/health", tags=["status"])
    @app.get("/api/health", tags=["status"])
    def health() -> dict[str, Any]:
        """Liveness plus a database round trip."""
        t0 = time.perf_counter()
        last = db.last_event_id()
        return {"status": "ok", "db": "ok", "db_ms": round((time.perf_counter() - t0) * 1000, 2),
                "last_event_id": last, "writes_enabled": bool(token)}

    @app.get("/api/status", tags=["status"])
    async def status(run_id: str | None = None) -> dict[str, Any]:
        """The current (or given) run: status, round progress, last metrics, nodes, managed process.
        Runs on the event loop (no thread hop): a cached snapshot plus one indexed query."""
        out = db.status(run_id)
        if run_id and out["run"] is None:
            raise ApiError(404, f"no run '{run_id}'; list runs at /api/runs")
        out["managed_run"] = manager.active()
        out["writes_enabled"] = bool(token)
        return out

    # -- runs ---------------------------------------------------------------------------------
    @app.get("/api/runs", tags=["runs"])
    def list_runs(limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return db.list_runs(limit)

    @app.get("/api/runs/{run_id}", tags=["runs"])
    def get_run(run_id: str) -> dict[str, Any]:
        run = db.get_run(run_id)
        if run is None:
            raise ApiError(404, f"no run '{run_id}'; list runs at /api/runs")
        return run

    @app.post("/api/runs", tags=["runs"], status_code=202, dependencies=auth)
    @app.post("/api/training/start", tags=["runs"], status_code=202, dependencies=auth)
    def start_run(request: RunRequest) -> dict[str, Any]:
        """Start a simulated run (``python -m fl_server`` subprocess) from a validated config."""
        try:
            return manager.start(request)
        except RunConflict as exc:
            raise ApiError(409, str(exc)) from exc

    @app.post("/api/runs/{run_id}/stop", tags=["runs"], dependencies=auth)
    def stop_run(run_id: str) -> dict[str, Any]:
        try:
            return manager.stop(run_id)
        except RunConflict as exc:
            raise ApiError(409, str(exc)) from exc

    @app.post("/api/training/stop", tags=["runs"], dependencies=auth)
    def stop_training() -> dict[str, Any]:
        """Stop the active managed run, whichever it is."""
        try:
            return manager.stop()
        except RunConflict as exc:
            raise ApiError(409, str(exc)) from exc

    @app.get("/api/runs/{run_id}/log", tags=["runs"], response_class=PlainTextResponse)
    def run_log(run_id: str, tail: int = Query(200, ge=1, le=5000)) -> str:
        path = manager.log_path(run_id)
        if not path.is_file():
            raise ApiError(404, f"no console log for run '{run_id}' (only runs started from the API have one)")
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:])

    @app.get("/api/options", tags=["runs"])
    def options() -> dict[str, Any]:
        """Choices and defaults of the run and task forms."""
        groups = ("dataset", "model", "secagg", "chain", "strategy", "selection")
        return {"choices": {g: config_options(g) for g in groups}, "run_defaults": RunRequest().model_dump(),
                "publisher_available": publisher.is_file() and profile is not None,
                "publisher_script": publisher.is_file(), "publisher_profile": profile is not None}

    # -- rounds and metrics -----------------------------------------------------------------------
    @app.get("/api/rounds", tags=["rounds"])
    @app.get("/api/runs/{run_id}/rounds", tags=["rounds"])
    def rounds(run_id: str | None = None) -> list[dict[str, Any]]:
        rid = run_or_latest(run_id)
        return db.list_rounds(rid) if rid else []

    @app.get("/api/metrics", tags=["rounds"])
    @app.get("/api/runs/{run_id}/metrics", tags=["rounds"])
    def run_metrics(run_id: str | None = None, name: str | None = Query(None, max_length=64)) -> list[dict[str, Any]]:
        rid = run_or_latest(run_id)
        return db.list_metrics(rid, name) if rid else []

    @app.get("/api/training/metrics", tags=["rounds"])
    def training_metrics(run_id: str | None = None) -> dict[str, Any]:
        """Loss and accuracy per round of the current (or given) run, as parallel lists."""
        rid = run_or_latest(run_id)
        rows = db.list_rounds(rid) if rid else []
        done = [r for r in rows if r["status"] == "finished"]
        return {"run_id": rid, "round": [r["round"] for r in done], "accuracy": [r["accuracy"] for r in done],
                "loss": [r["loss"] for r in done], "train_loss": [r["train_loss"] for r in done],
                "round_seconds": [r["round_seconds"] for r in done],
                "upload_bytes_per_miner": [r["upload_bytes_per_miner"] for r in done]}

    # -- nodes --------------------------------------------------------------------------------
    @app.get("/api/nodes", tags=["nodes"])
    def list_nodes(run_id: str | None = None) -> list[dict[str, Any]]:
        """Miners of the run: status, latency, reliability, reputation, selections, submissions."""
        rid = run_or_latest(run_id)
        return db.list_nodes(rid) if rid else []

    @app.get("/api/nodes/{node_id}", tags=["nodes"])
    def get_node(node_id: str, run_id: str | None = None) -> dict[str, Any]:
        rid = need_run(run_id)
        node = next((n for n in db.list_nodes(rid) if n["node_id"] == node_id), None)
        if node is None:
            raise ApiError(404, f"no node '{node_id}' in run {rid}")
        node["selection_history"] = db.list_selections(rid, node_id)
        node["submissions"] = db.list_table("submissions", rid, node_id=node_id)
        return node

    @app.get("/api/selections", tags=["nodes"])
    def list_selections(run_id: str | None = None) -> list[dict[str, Any]]:
        rid = run_or_latest(run_id)
        return db.list_selections(rid) if rid else []

    # -- chain tables ---------------------------------------------------------------------------
    def table_endpoint(name: str) -> None:
        def handler(run_id: str | None = None, task_id: int | None = None, address: str | None = None,
                    all_runs: bool = False, limit: int = Query(1000, ge=1, le=10000)) -> list[dict[str, Any]]:
            rid = None if all_runs else run_or_latest(run_id)
            if rid is None and not all_runs:
                return []
            filters: dict[str, Any] = {}
            table_cols = db.columns(name)
            if task_id is not None and "task_id" in table_cols:
                filters["task_id"] = task_id
            if address is not None and "address" in table_cols:
                filters["address"] = address
            return db.list_table(name, rid, limit, **filters)

        handler.__name__ = f"list_{name}"
        handler.__doc__ = f"Rows of {name} of the current (or given) run; ``all_runs=true`` for every run."
        app.get(f"/api/{name}", tags=["chain"])(handler)

    for table in CHAIN_TABLES:
        table_endpoint(table)

    @app.get("/api/balances", tags=["chain"])
    def balances(address: str | None = None) -> list[dict[str, Any]]:
        """Per address: earned, claimed, claimable, refunds and stake (wei, decimal strings), all runs."""
        return db.balances(address)

    @app.get("/api/claims", tags=["chain"])
    def claims(address: str | None = None) -> list[dict[str, Any]]:
        return db.list_table("rewards", None, 10000, kind="claimed", address=address)

    @app.get("/api/blockchain/contributions", tags=["chain"])
    def contributions(run_id: str | None = None) -> list[dict[str, Any]]:
        """Accepted submissions per miner address of the run (count, bytes), with earned rewards."""
        rid = run_or_latest(run_id)
        if rid is None:
            return []
        out: dict[str, dict[str, Any]] = {}
        for s in db.list_table("submissions", rid, 100000, accepted=True):
            key = s["address"] or f"node {s['node_id']}"
            entry = out.setdefault(key, {"miner": key, "node_id": s["node_id"], "submissions": 0, "bytes": 0,
                                         "rounds": [], "earned_wei": "0"})
            entry["submissions"] += 1
            entry["bytes"] += s["bytes"] or 0
            entry["rounds"].append(s["round"])
        for r in db.list_table("rewards", rid, 100000, kind="earned"):
            if r["address"] in out:
                out[r["address"]]["earned_wei"] = str(int(out[r["address"]]["earned_wei"]) + int(r["amount_wei"]))
        return list(out.values())

    @app.get("/api/blockchain/rewards/{address}", tags=["chain"])
    def rewards_of(address: str) -> dict[str, Any]:
        rows = db.balances(address)
        if not rows:
            raise ApiError(404, f"no rewards or stake recorded for {address}")
        return rows[0] | {"rewards": db.list_table("rewards", None, 10000, address=address)}

    @app.post("/api/blockchain/claim/{address}", tags=["chain"], dependencies=auth)
    def claim(address: str) -> JSONResponse:
        """Claims are pull payments signed by the miner's own key; the server never holds it."""
        owed = db.balances(address)
        amount = owed[0]["claimable_wei"] if owed else "0"
        return JSONResponse({
            "error": "the server cannot claim for a miner: claim() must be sent from the miner's own key "
                     "(the aggregator never holds miner keys); use the miner's tooling with its key file",
            "status": 501, "address": address, "claimable_wei": amount,
        }, 501)

    # -- miners (a miner's view) ------------------------------------------------------------------
    @app.get("/api/miners/{address}", tags=["chain"])
    def miner_view(address: str) -> dict[str, Any]:
        """Tasks joined, stake, pending reveals, rewards earned and claimable for one miner address."""
        view = db.miner_view(address)
        if view is None:
            raise ApiError(404, f"miner {address} has no recorded submissions, votes, rewards or stake")
        return view

    @app.get("/api/miners", tags=["chain"])
    def miners() -> list[dict[str, Any]]:
        return db.miner_addresses()

    # -- tasks --------------------------------------------------------------------------------
    @app.get("/api/tasks", tags=["tasks"])
    def list_tasks(status: str | None = Query(None, max_length=16),
                   sort: Literal["date", "reward", "status"] = "date",
                   order: Literal["asc", "desc"] = "desc") -> list[dict[str, Any]]:
        """Tasks (published on chain by runs, or requested from the form), filtered and sorted."""
        rows = db.list_tasks(status)
        keys = {"date": lambda t: t["created_at"] or 0, "reward": lambda t: int(t["reward_pool_wei"] or 0),
                "status": lambda t: t["status"] or ""}
        return sorted(rows, key=keys[sort], reverse=order == "desc")

    @app.get("/api/tasks/{row_id}", tags=["tasks"])
    def get_task(row_id: int) -> dict[str, Any]:
        """A task with its lifecycle timeline (published, rounds, blocks, votes, reveals, rewards, refunds)."""
        task = db.get_task(row_id)
        if task is None:
            raise ApiError(404, f"no task {row_id}; list tasks at /api/tasks")
        task["timeline"] = db.task_timeline(task)
        return task

    @app.post("/api/tasks", tags=["tasks"], status_code=202, dependencies=auth)
    def publish_task(request: TaskRequest) -> JSONResponse:
        """Record the request, then publish it on chain with scripts/publish_task.py and the configured
        publisher profile (501 when either is missing: the request stays recorded as ``unpublished``)."""
        if request.dataset not in config_options("dataset"):
            raise ApiError(422, f"invalid request: dataset '{request.dataset}' is not one of {config_options('dataset')}")
        if request.model not in config_options("model"):
            raise ApiError(422, f"invalid request: model '{request.model}' is not one of {config_options('model')}")
        reward_wei = int(Decimal(str(request.reward_eth)) * 10**18)
        row_id = db.add_task_request(request.model_dump() | {"reward_pool_wei": reward_wei})
        missing = None
        if not publisher.is_file():
            missing = f"the publisher script {publisher} is not installed"
        elif profile is None:
            missing = ("no publisher profile is configured (python -m fl_server.api --publisher-profile FILE; "
                       "see docs/dashboard.md)")
        if missing is not None:
            db.set_task_row(row_id, status="unpublished")
            return JSONResponse({"error": f"task recorded but not published: {missing}", "status": 501,
                                 "task": row_id}, 501)
        assert profile is not None
        out = runs_dir / "tasks" / f"task-{row_id}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(publisher), "publish", *profile_args(profile, out.parent / f"task-{row_id}.secret.json"),
                "--dataset", request.dataset, "--model", request.model, "--rounds", str(request.rounds),
                "--reward-wei", str(reward_wei), "--duration-s", str(int(request.deadline_hours * 3600)),
                "--target-accuracy", str(request.target_accuracy), "--json", str(out)]
        try:
            proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=PUBLISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            db.set_task_row(row_id, status="failed")
            return JSONResponse({"error": f"the publisher did not finish within {PUBLISH_TIMEOUT_S} s", "status": 504,
                                 "task": row_id}, 504)
        if proc.returncode != 0 or not out.is_file():
            db.set_task_row(row_id, status="failed")
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return JSONResponse({"error": f"publisher failed: {lines[-1] if lines else f'exit {proc.returncode}'}",
                                 "status": 502, "task": row_id}, 502)
        result = json.loads(out.read_text())
        db.set_task_row(row_id, status="published", task_id=result.get("task_id"), model_hash=result.get("model_hash"),
                        contract=profile["contract"], details=request.model_dump() | {"published": result})
        return JSONResponse({"task": row_id, "status": "published", "task_id": result.get("task_id"),
                             "model_hash": result.get("model_hash")}, 202)

    # -- events: JSON page and live stream ------------------------------------------------------
    @app.get("/api/events", tags=["events"])
    def list_events(after: int = Query(0, ge=0), run_id: str | None = None,
                    limit: int = Query(200, ge=1, le=5000)) -> list[dict[str, Any]]:
        return db.events_after(after, run_id, limit=limit)

    @app.get("/api/stream", tags=["events"])
    async def stream(request: Request, after: int | None = Query(None, ge=0), run_id: str | None = None,
                     limit_s: float | None = Query(None, gt=0, le=3600)) -> StreamingResponse:
        """Server-Sent Events: every stored event after ``after`` (or the ``Last-Event-ID`` header the
        browser sends on reconnect; default: from now). Each message has ``id`` = event id and JSON
        data ``{id, run_id, kind, ts, payload}``. ``limit_s`` ends the stream (for scripts and tests)."""
        header = request.headers.get("last-event-id")
        if header is not None:
            if not header.strip().isdigit():
                raise ApiError(400, f"Last-Event-ID must be an event id (integer), got {header[:40]!r}")
            start = int(header)
        else:
            start = after if after is not None else await run_in_threadpool(db.last_event_id)

        async def messages() -> Any:
            last, began, beat = start, time.monotonic(), time.monotonic()
            yield f"retry: 2000\n: resuming after event {last}\n\n"
            while True:
                rows = await run_in_threadpool(db.events_after, last, run_id, None, 200)
                for row in rows:
                    last = row["id"]
                    yield f"id: {last}\ndata: {json.dumps(row)}\n\n"
                now = time.monotonic()
                if limit_s is not None and now - began >= limit_s:
                    return
                if await request.is_disconnected():
                    return
                if now - beat > HEARTBEAT_S:
                    beat = now
                    yield ": keep-alive\n\n"
                if not rows:
                    await asyncio.sleep(STREAM_POLL_S)

        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- dashboard ----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=DASHBOARD_DIR), name="static")
    return app
