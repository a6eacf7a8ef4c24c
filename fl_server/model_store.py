"""Model store: an HTTP service that keeps blobs by content hash (keccak-256, as on chain).

Two kinds of blob, each under its own URL prefix:

- ``/models/<hash>``: safetensors weights (initial models, every round's candidate). The bytes are
  parsed with safetensors before they are accepted: a pickle, a torch.save archive or junk is refused.
- ``/specs/<hash>``: task specs, canonical JSON (aggregator.task_spec.TaskSpec); refused unless the
  bytes parse as a spec and are in canonical form.

``PUT <prefix>/<hash>`` stores the body only when keccak256(body) equals ``<hash>`` (64 lower-case
hex digits, nothing else); ``GET``/``HEAD`` serve it back. The body size is taken from
Content-Length and refused (413) before anything is read when it exceeds the limit. No part of a
request reaches the filesystem: the hash is validated against ``[0-9a-f]{64}`` and the file name is
derived from it. Writes are atomic (temporary file + rename), so a reader never sees half a blob.

Uploads may require a bearer token (``--upload-token-file``): anyone may read, only the publisher
and the aggregator write. Content addressing already makes a blob unforgeable; the token only
limits who can fill the disk.

Run it:  ``python -m fl_server.model_store --root DIR --host 127.0.0.1 --port 8470``.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from eth_utils import keccak

from aggregator.models import ModelError, state_from_bytes
from aggregator.task_spec import TaskSpec, TaskSpecError
from fl_server.fileio import atomic_write

log = logging.getLogger("modelmine.model_store")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
HASH_RE = re.compile(r"[0-9a-f]{64}")
ROUTE_RE = re.compile(r"/(models|specs)/([0-9a-f]{64})")
SUFFIX = {"models": ".safetensors", "specs": ".json"}
TOKEN_FILE_ENV = "MODELMINE_STORE_TOKEN_FILE"  # file with the upload token (the aggregator's environment)


class BlobRejected(ValueError):
    """A blob refused by the store: wrong hash, wrong format, too large, malformed name."""


def check_model(data: bytes) -> None:
    """Accept only bytes that parse as safetensors (never unpickles anything)."""
    try:
        state_from_bytes(data)
    except ModelError as exc:
        raise BlobRejected(f"not a safetensors model: {exc}") from exc


def check_spec(data: bytes) -> None:
    """Accept only a task spec in canonical JSON."""
    try:
        spec = TaskSpec.from_json(data)
    except TaskSpecError as exc:
        raise BlobRejected(f"not a task spec: {exc}") from exc
    if spec.to_canonical_json().encode() != data:
        raise BlobRejected("task spec is not in canonical JSON (sorted keys, no whitespace)")


CHECKS: dict[str, Callable[[bytes], None]] = {"models": check_model, "specs": check_spec}


class BlobStore:
    """Content-addressed blobs on disk under ``root/<kind>/<hash><suffix>``."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        for kind in SUFFIX:
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, kind: str, digest: str) -> Path:
        if kind not in SUFFIX:
            raise BlobRejected(f"unknown blob kind {kind!r}")
        if not HASH_RE.fullmatch(digest):
            raise BlobRejected("a blob name must be 64 lower-case hex digits")
        return self.root / kind / f"{digest}{SUFFIX[kind]}"

    def put(self, kind: str, digest: str, data: bytes) -> bool:
        """Store ``data`` under ``digest`` after checking hash, size and format; False if it was there."""
        path = self._path(kind, digest)
        if len(data) > self.max_bytes:
            raise BlobRejected(f"blob of {len(data)} bytes exceeds the limit of {self.max_bytes}")
        actual = keccak(data).hex()
        if actual != digest:
            raise BlobRejected(f"content hash is {actual}, not the claimed {digest}")
        CHECKS[kind](data)
        with self._lock:
            if path.exists():
                return False
            atomic_write(path, data)
        return True

    def get(self, kind: str, digest: str) -> bytes | None:
        path = self._path(kind, digest)
        return path.read_bytes() if path.exists() else None


def make_handler(store: BlobStore, upload_token: bytes | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ModelMineStore/1"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: object) -> None:  # route to logging, not stderr
            log.info("%s %s", self.address_string(), fmt % args)

        def _reply(self, code: int, body: bytes = b"", ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _route(self) -> tuple[str, str] | None:
            match = ROUTE_RE.fullmatch(self.path)  # raw path: no query, no escapes, no dots
            return (match.group(1), match.group(2)) if match else None

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path == "/health":
                self._reply(200, b"ok")
                return
            route = self._route()
            if route is None:
                self._reply(400, b"path must be /models/<64 hex> or /specs/<64 hex>\n")
                return
            data = store.get(*route)
            if data is None:
                self._reply(404, b"no such blob\n")
                return
            self._reply(200, data, "application/octet-stream" if route[0] == "models" else "application/json")

        do_HEAD = do_GET  # noqa: N815

        def do_PUT(self) -> None:  # noqa: N802
            self.close_connection = True  # never read a body we refused
            route = self._route()
            if route is None:
                self._reply(400, b"path must be /models/<64 hex> or /specs/<64 hex>\n")
                return
            if upload_token is not None:
                given = self.headers.get("Authorization", "").removeprefix("Bearer ").encode()
                if not hmac.compare_digest(given, upload_token):
                    self._reply(401, b"upload needs the store's bearer token\n")
                    return
            length_text = self.headers.get("Content-Length")
            if length_text is None or not length_text.isdigit():
                self._reply(411, b"Content-Length required\n")
                return
            length = int(length_text)
            if length > store.max_bytes:
                self._reply(413, f"body of {length} bytes exceeds the limit of {store.max_bytes}\n".encode())
                return
            data = self.rfile.read(length)
            if len(data) != length:
                self._reply(400, b"body shorter than Content-Length\n")
                return
            try:
                created = store.put(route[0], route[1], data)
            except BlobRejected as exc:
                log.warning("refused %s/%s: %s", route[0], route[1], exc)
                self._reply(422, f"{exc}\n".encode())
                return
            self._reply(201 if created else 200, f"{route[1]}\n".encode())

        def do_POST(self) -> None:  # noqa: N802
            self.close_connection = True
            self._reply(405, b"use PUT /models/<hash> or PUT /specs/<hash>\n")

        do_DELETE = do_POST  # noqa: N815

    return Handler


def serve(root: Path, host: str, port: int, max_bytes: int = DEFAULT_MAX_BYTES,
          upload_token: bytes | None = None) -> ThreadingHTTPServer:
    """A started-but-not-serving server (call ``serve_forever``); ``port=0`` picks a free port."""
    store = BlobStore(root, max_bytes)
    server = ThreadingHTTPServer((host, port), make_handler(store, upload_token))
    server.daemon_threads = True
    return server


# -- upload helper for the server role (the aggregator uploads every candidate before proposing it) --


def upload_blob(base_url: str, kind: str, data: bytes, token: str | None = None, timeout: float = 30.0) -> str:
    """PUT ``data`` under its keccak hash; returns the hash hex. Raises BlobRejected on refusal.
    ``token`` defaults to the content of the file named by $MODELMINE_STORE_TOKEN_FILE (if set)."""
    if kind not in SUFFIX:
        raise BlobRejected(f"unknown blob kind {kind!r}")
    digest = keccak(data).hex()
    headers = {"Content-Type": "application/octet-stream"}
    if token is None and os.environ.get(TOKEN_FILE_ENV):
        token = Path(os.environ[TOKEN_FILE_ENV]).read_text().strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    resp = requests.put(f"{base_url.rstrip('/')}/{kind}/{digest}", data=data, headers=headers, timeout=timeout)
    if resp.status_code not in (200, 201):
        raise BlobRejected(f"store refused {kind}/{digest}: HTTP {resp.status_code} {resp.text.strip()}")
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_server.model_store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder that holds the blobs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8470)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest accepted blob")
    parser.add_argument("--upload-token-file", help="file holding a bearer token required for PUT (optional)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_bytes <= 0:
        print("error: --max-bytes must be > 0", file=sys.stderr)
        return 2
    token = None
    if args.upload_token_file:
        path = Path(args.upload_token_file)
        if not path.is_file():
            print(f"error: upload token file {path} does not exist", file=sys.stderr)
            return 2
        token = path.read_text().strip().encode()
    try:
        server = serve(Path(args.root), args.host, args.port, args.max_bytes, token)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    log.info("model store serving %s on http://%s:%d (limit %d bytes)", args.root, host, port, args.max_bytes)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.exit(main())
