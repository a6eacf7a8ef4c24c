"""REST API, live stream and dashboard of a ModelMine server (docs/dashboard.md).

``attach_dashboard(cfg, out_dir)`` is the one call the experiment makes: it subscribes the run
database to the event bus (``dashboard.record``) and, with ``dashboard.enabled`` (``dashboard=true``),
serves the API and dashboard from a uvicorn thread of the server process. ``python -m fl_server.api
--db PATH`` serves a finished run's database on its own. FastAPI is imported only when serving.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fl_server.events import default_bus, emit
from fl_server.rundb import RunDB, new_run_id, sqlite_url

log = logging.getLogger("modelmine.api")
MIN_TOKEN_CHARS = 16


class DashboardConfigError(ValueError):
    """A dashboard setting that cannot work; the message names the fix."""


@dataclass(frozen=True)
class DashboardSettings:
    enabled: bool = False
    record: bool = True
    db_url: str = ""
    run_id: str = ""
    host: str = "127.0.0.1"
    port: int = 8765
    token_env: str = "MODELMINE_API_TOKEN"
    token_file: str = ""
    linger_s: float = 0.0

    @classmethod
    def from_config(cls, node: Any) -> DashboardSettings:
        """From the ``dashboard`` config node: a mapping of the fields above, or a bare bool
        (``dashboard=true``) meaning enabled with the defaults; missing node = defaults."""
        if node is None:
            return cls()
        if isinstance(node, bool):
            return cls(enabled=node)
        names = {f.name: f.type for f in fields(cls)}
        values = {}
        for key in node:
            if key not in names:
                raise DashboardConfigError(f"unknown setting dashboard.{key}; known: {', '.join(names)}")
            values[key] = node[key]
        settings = cls(**values)
        if not 0 < int(settings.port) < 65536:
            raise DashboardConfigError(f"dashboard.port={settings.port} is not a TCP port (1..65535)")
        return settings


def load_token(settings: DashboardSettings) -> str | None:
    """The bearer token from the env var ``token_env`` or the file ``token_file`` (env wins); None when
    neither is set (state-changing endpoints then refuse). Too short a token is a config error."""
    token = os.environ.get(settings.token_env, "").strip() if settings.token_env else ""
    if not token and settings.token_file:
        path = Path(settings.token_file).expanduser()
        if not path.is_file():
            raise DashboardConfigError(f"dashboard.token_file {path} does not exist")
        token = (path.read_text().splitlines() or [""])[0].strip()
    if token and len(token) < MIN_TOKEN_CHARS:
        raise DashboardConfigError(f"the API token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                                   "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
    return token or None


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DashboardConfigError(
                f"cannot serve the dashboard on {host}:{port} ({exc.strerror}); pick another with dashboard.port=N"
            ) from exc


class DashboardServer:
    """uvicorn serving ``app`` from a daemon thread; ``url`` once started."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, ws="none",
                                     lifespan="off", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="modelmine-dashboard", daemon=True)
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def start(self, timeout: float = 20.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise DashboardConfigError(f"the dashboard server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


@dataclass
class DashboardHandle:
    """What :func:`attach_dashboard` set up: the run's id, its database and (when serving) the server."""

    run_id: str
    db: RunDB
    server: DashboardServer | None
    linger_s: float = 0.0

    def close(self, status: str = "failed", error: str | None = "the server process exited before the run finished"
              ) -> None:
        """Mark the run ended if nothing else did, keep serving ``linger_s`` seconds, stop serving."""
        self.db.finish_run(self.run_id, status, error)
        if self.server is not None:
            if self.linger_s > 0:
                print(f"dashboard: run over; still serving {self.server.url} for {self.linger_s:.0f} s (Ctrl-C ends)")
                with contextlib.suppress(KeyboardInterrupt):
                    time.sleep(self.linger_s)
            self.server.stop()
        self.db.close()  # checkpoints SQLite's WAL into run.db


def attach_dashboard(cfg: Any, out_dir: Path) -> DashboardHandle | None:
    """Record this run in the run database and, when enabled, serve the dashboard (prints its URL).

    Bad settings raise :class:`DashboardConfigError` before any training starts. Returns None when
    both recording and serving are off."""
    settings = DashboardSettings.from_config(cfg.get("dashboard") if hasattr(cfg, "get") else None)
    if not (settings.record or settings.enabled):
        return None
    token = load_token(settings) if settings.enabled else None
    if settings.enabled:
        check_port_free(settings.host, int(settings.port))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    db = RunDB.open(settings.db_url or sqlite_url(out_dir / "run.db"))
    run_id = settings.run_id or new_run_id()
    db.attach(default_bus, run_id)
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    emit("run_started", run_id=run_id, config=config, out_dir=str(out_dir), rounds=config.get("rounds"),
         num_miners=config.get("num_miners"), dataset=(config.get("dataset") or {}).get("name"),
         model=(config.get("model") or {}).get("name"))
    server = None
    if settings.enabled:
        from fl_server.api.app import create_app

        app = create_app(db, token=token, runs_dir=out_dir.parent / "api_runs")
        server = DashboardServer(app, settings.host, int(settings.port))
        url = server.start()
        auth = "writes enabled (bearer token set)" if token else f"read-only (set {settings.token_env} to start/stop runs)"
        print(f"dashboard: {url}  (API docs {url}docs; {auth}); database {db.url}", flush=True)
    handle = DashboardHandle(run_id, db, server, float(settings.linger_s))
    atexit.register(handle.close)
    return handle
