"""The task publisher's key service: its own process, the only holder of the publisher secret ``s_T``.

    python scripts/key_service.py serve --config key_service.yaml

It answers ``POST /v1/functional-key`` from the task's aggregator (HMAC-authenticated, see
``aggregator/key_issuer.py`` for the wire format and the issuing policy) and nothing else. It
imports no ``fl_server`` code: the policy is ``aggregator.key_issuer.KeyIssuer``; this file adds
the durable SQLite ledger, the hardened HTTP(S) front, the chain-backed commitment source and the
command line. Config (YAML or JSON; secrets from files (mode 0600) or the environment, never logged):

    host: 127.0.0.1            # loopback by default; anything else requires tls_cert/tls_key
    port: 8461
    backend: nddfe             # masked | nddfe (the task's)
    bits: 15                   # the task's quantization bits
    threshold: 2               # t of the task: the least |I| ever served
    ledger: /var/lib/modelmine/key_ledger.sqlite   # (task, round, attempt) -> (I, support hash)
    publisher_key_file: publisher_secagg.key        # or env MODELMINE_PUBLISHER_SECAGG_KEY (hex)
    credential_file: aggregator.credential          # or env MODELMINE_KEY_SERVICE_CREDENTIAL (hex, >= 32 bytes)
    tls_cert: cert.pem         # optional (required beyond loopback)
    tls_key: key.pem
    chain: {rpc_url: http://127.0.0.1:8545, contract: "0x..."}  # I and the open epoch from the chain
    # without a chain (local tests only): miners_file: miners.json ({address: secagg_public_hex})
    # and allow_unverified_sets: true
    max_body_bytes: 8388608
    socket_timeout_s: 10
    replay_window_s: 120
    max_connections: 16
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sqlite3
import ssl
import stat
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator.key_issuer import (  # noqa: E402
    MAX_BODY_BYTES,
    PATH,
    REPLAY_WINDOW_S,
    ChainCommitments,
    CommitmentSource,
    Issued,
    KeyIssuer,
    KeyRefused,
    KeyRequest,
    MalformedKeyRequest,
    UnverifiedCommitments,
    reply_tag,
    request_tag,
)
from aggregator.secagg import PublisherKeys  # noqa: E402

log = logging.getLogger("modelmine.key_service")
PUBLISHER_KEY_ENV = "MODELMINE_PUBLISHER_SECAGG_KEY"
CREDENTIAL_ENV = "MODELMINE_KEY_SERVICE_CREDENTIAL"


class ConfigError(ValueError):
    """A key-service config that cannot work; the message says how to fix it."""


# -- durable ledger ------------------------------------------------------------------------------


class SqliteLedger:
    """(task, round, attempt) -> (I, support hash), committed with ``synchronous=FULL`` before
    ``record`` returns, so the decision survives a crash or restart of the service."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS issued (task TEXT NOT NULL, round TEXT NOT NULL, attempt TEXT NOT NULL, "
            "members TEXT NOT NULL, support_hash BLOB NOT NULL, issued_at REAL NOT NULL, "
            "PRIMARY KEY (task, round, attempt))"
        )

    def lookup(self, task_id: int, round_: int, attempt: int) -> Issued | None:
        with self._lock:
            row = self._db.execute(
                "SELECT members, support_hash FROM issued WHERE task=? AND round=? AND attempt=?",
                (str(task_id), str(round_), str(attempt)),
            ).fetchone()
        return None if row is None else Issued(tuple(json.loads(row[0])), bytes(row[1]))

    def highest(self, task_id: int) -> tuple[int, int] | None:
        with self._lock:
            rows = self._db.execute("SELECT round, attempt FROM issued WHERE task=?", (str(task_id),)).fetchall()
        return max((int(r), int(a)) for r, a in rows) if rows else None

    def record(self, task_id: int, round_: int, attempt: int, issued: Issued) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO issued VALUES (?, ?, ?, ?, ?, ?)",
                    (str(task_id), str(round_), str(attempt), json.dumps(list(issued.members)), issued.support_hash, time.time()),
                )
            except sqlite3.IntegrityError as exc:
                raise KeyRefused(f"a key for task {task_id} round {round_} attempt {attempt} was already issued") from exc

    def close(self) -> None:
        self._db.close()


# -- replay protection ---------------------------------------------------------------------------


class ReplayGuard:
    """Refuses timestamps outside ``window`` seconds of now and nonces seen within the window."""

    def __init__(self, window: float = REPLAY_WINDOW_S, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, timestamp: str, nonce: str) -> None:
        now = self.clock()
        try:
            ts = int(timestamp)
        except ValueError as exc:
            raise KeyRefused("bad timestamp") from exc
        if abs(now - ts) > self.window:
            raise KeyRefused(f"timestamp outside the {self.window:.0f} s replay window")
        if len(nonce) != 32 or any(c not in "0123456789abcdef" for c in nonce):
            raise KeyRefused("nonce must be 32 lower-case hex characters")
        with self._lock:
            self._seen = {n: t for n, t in self._seen.items() if now - t <= 2 * self.window}
            if nonce in self._seen:
                raise KeyRefused("replayed request (nonce already seen)")
            self._seen[nonce] = now


# -- HTTP(S) front -------------------------------------------------------------------------------


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 32

    def __init__(self, *args: Any, max_connections: int = 16, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # overloaded: drop, do not queue threads
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def make_server(
    issuer: KeyIssuer,
    credential: bytes,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    socket_timeout_s: float = 10.0,
    replay: ReplayGuard | None = None,
    max_connections: int = 16,
) -> ThreadingHTTPServer:
    """The key service's HTTP(S) server (not yet serving: call ``serve_forever``).

    Checks, in order, before any JSON is parsed: path, a decimal Content-Length within
    ``max_body_bytes`` (else 411/400/413 without reading the body), the body read under the socket
    timeout, the HMAC tag, the timestamp and nonce. Replies 200 (key bytes), 400, 401, 403, 404,
    405, 408, 411, 413 or 500, each with ``X-MM-Reply-Auth``."""
    if len(credential) < 32:
        raise ConfigError("the aggregator credential must be at least 32 bytes")
    guard = replay or ReplayGuard()

    class Handler(BaseHTTPRequestHandler):
        timeout = socket_timeout_s  # per socket operation: slow or silent clients are cut off
        protocol_version = "HTTP/1.0"
        server_version = "ModelMineKeyService/1"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server API)
            log.info("%s %s", self.address_string(), format % args)  # request line and status only

        def _reply(self, status: int, payload: bytes) -> None:
            request = self.headers.get("X-MM-Auth", "") if self.headers is not None else ""
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-MM-Reply-Auth", reply_tag(credential, request, status, payload))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            self._reply(405, b"only POST " + PATH.encode())

        do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET  # noqa: N815

        def do_POST(self) -> None:  # noqa: N802
            if self.path != PATH:
                self._reply(404, b"unknown path")
                return
            length = self.headers.get("Content-Length")
            if length is None:
                self._reply(411, b"Content-Length required")
                return
            if not length.isdigit() or len(length) > 12:
                self._reply(400, b"Content-Length must be a non-negative decimal integer")
                return
            if int(length) > max_body_bytes:
                self._reply(413, f"body larger than {max_body_bytes} bytes".encode())
                return
            try:
                body = self.rfile.read(int(length))
            except TimeoutError:
                self._reply(408, b"body not received in time")
                return
            if len(body) != int(length):
                self._reply(400, b"body shorter than Content-Length")
                return
            tag = self.headers.get("X-MM-Auth", "")
            expected = request_tag(
                credential, "POST", self.path, self.headers.get("X-MM-Timestamp", ""),
                self.headers.get("X-MM-Nonce", ""), body,
            )
            if not hmac.compare_digest(tag.encode(), expected.encode()):
                self._reply(401, b"bad request signature")
                return
            try:
                guard.check(self.headers.get("X-MM-Timestamp", ""), self.headers.get("X-MM-Nonce", ""))
                req = KeyRequest.from_body(body, max_body_bytes)
                key = issuer.issue(req.task_id, req.round, req.attempt, list(req.addresses), req.indices)
            except MalformedKeyRequest as exc:
                self._reply(400, str(exc).encode())
                return
            except KeyRefused as exc:
                log.warning("refused: %s", exc)
                self._reply(403, str(exc).encode())
                return
            except Exception as exc:  # never let one request take the service down
                log.error("internal error: %s", type(exc).__name__)
                self._reply(500, b"internal error")
                return
            self._reply(200, key)

    server = _BoundedServer((host, port), Handler, bind_and_activate=True, max_connections=max_connections)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


# -- configuration -------------------------------------------------------------------------------


def _secret(path: str | None, env: str, what: str, min_len: int) -> bytes:
    text = os.environ.get(env)
    if not text:
        if not path:
            raise ConfigError(f"{what}: set {env} or give a file in the config")
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{what}: {p} does not exist")
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"{what}: {p} is readable by others (mode {oct(mode)}); run chmod 600 {p}")
        text = p.read_text()
    try:
        raw = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError as exc:
        raise ConfigError(f"{what} is not hex") from exc
    if len(raw) < min_len:
        raise ConfigError(f"{what} must be at least {min_len} bytes")
    return raw


def load_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping")
    return data


def build(cfg: dict[str, Any]) -> tuple[ThreadingHTTPServer, SqliteLedger]:
    """Server and ledger from a config mapping; raises ConfigError with the fix."""
    backend = str(cfg.get("backend", ""))
    if backend not in ("masked", "nddfe"):
        raise ConfigError(f"backend must be masked or nddfe, got {backend!r}")
    threshold = int(cfg.get("threshold", 2))
    if threshold < 2:
        raise ConfigError("threshold must be >= 2 (the task's t)")
    host = str(cfg.get("host", "127.0.0.1"))
    cert, key = cfg.get("tls_cert"), cfg.get("tls_key")
    if bool(cert) != bool(key):
        raise ConfigError("give both tls_cert and tls_key")
    if host not in ("127.0.0.1", "::1", "localhost") and not cert:
        raise ConfigError(f"host {host} is beyond loopback: set tls_cert and tls_key (see docs/secure_round.md)")
    if "ledger" not in cfg:
        raise ConfigError("set ledger: a SQLite file that keeps every issued key's set across restarts")
    publisher = PublisherKeys.from_secret(_secret(cfg.get("publisher_key_file"), PUBLISHER_KEY_ENV, "publisher key", 32))
    credential = _secret(cfg.get("credential_file"), CREDENTIAL_ENV, "aggregator credential", 32)
    commitments: CommitmentSource
    if cfg.get("chain"):
        from contracts.chain import Chain, ChainConfig
        from contracts.client import ModelMineClient

        chain_cfg = dict(cfg["chain"])
        chain = Chain(ChainConfig.from_mapping({"backend": "rpc", "rpc_url": chain_cfg["rpc_url"]}))
        client = ModelMineClient(chain, str(chain_cfg["contract"]))
        if not hasattr(client, "committed_miners"):
            raise ConfigError("contracts.client.ModelMineClient has no committed_miners(): update the contracts package")
        keys = {e["miner"]: bytes(e["publicKey"]) for e in client.events("MinerRegistered")}
        commitments = ChainCommitments(client)  # type: ignore[arg-type]
        miner_key = _lookup(keys)
    elif cfg.get("miners_file") and cfg.get("allow_unverified_sets"):
        keys = {a: bytes.fromhex(h) for a, h in json.loads(Path(cfg["miners_file"]).read_text()).items()}
        commitments = UnverifiedCommitments()
        miner_key = _lookup(keys)
    else:
        raise ConfigError("set chain: {rpc_url, contract} (or, for local tests only, miners_file and allow_unverified_sets)")
    ledger = SqliteLedger(cfg["ledger"])
    issuer = KeyIssuer(backend, publisher, miner_key, threshold, commitments, ledger, int(cfg.get("bits", 15)))
    tls = tls_context(str(cert), str(key)) if cert else None
    server = make_server(
        issuer, credential, host, int(cfg.get("port", 8461)), tls,
        int(cfg.get("max_body_bytes", MAX_BODY_BYTES)), float(cfg.get("socket_timeout_s", 10)),
        ReplayGuard(float(cfg.get("replay_window_s", REPLAY_WINDOW_S))), int(cfg.get("max_connections", 16)),
    )
    return server, ledger


def _lookup(keys: dict[str, bytes]) -> Callable[[str], bytes]:
    from eth_utils import to_checksum_address

    table = {to_checksum_address(a): k for a, k in keys.items()}

    def miner_key(address: str) -> bytes:
        return table[to_checksum_address(address)]

    return miner_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve functional keys to the task's aggregator")
    serve.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        server, ledger = build(load_config(args.config))
    except (ConfigError, KeyError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    log.info("key service on %s://%s:%s%s", "https" if isinstance(server.socket, ssl.SSLSocket) else "http", host, port, PATH)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
