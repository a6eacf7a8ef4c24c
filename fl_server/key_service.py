"""The task publisher's key service: the only holder of the publisher secret ``s_T``.

It derives the functional key for a round's submitting set I, once per (task, round): a second
request for a different set of the same round is refused (two keys for different subsets would let
the aggregator subtract sums and learn one miner's update). It answers only the aggregator, which
proves itself with a shared credential (HMAC-SHA256 over the request in deployment; the same
credential checked in process in simulation).

Trust: the key service must not collude with the aggregator. With ``s_T`` and a miner's
ciphertext, anyone can unmask that miner, so ``s_T`` never leaves this object.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from aggregator import secagg
from aggregator.protocol import indices_from_bytes, indices_to_bytes
from aggregator.secagg import PublisherKeys


class KeyServiceError(PermissionError):
    """A key request refused: wrong credential, second set for a round, unknown miner."""


@dataclass
class PublisherKeyService:
    backend: str
    keys: PublisherKeys = field(repr=False)
    credential: bytes = field(repr=False)
    miner_key: Callable[[str], bytes]  # registered secure-aggregation key of an address
    bits: int = secagg.DEFAULT_BITS  # the task's quantization bits (fixes the masked word size)
    issued: dict[tuple[int, int], tuple[tuple[str, ...], bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def public(self) -> bytes:
        return self.keys.public

    def functional_key(
        self, credential: bytes, task_id: int, round_: int, addresses: Sequence[str], indices: np.ndarray
    ) -> bytes:
        """Key for the sum over ``addresses`` on ``indices``; the same set again returns the same key."""
        if not hmac.compare_digest(credential, self.credential):
            raise KeyServiceError("only the task's aggregator may request functional keys")
        members = tuple(sorted(addresses))
        if not members or len(set(members)) != len(members):
            raise KeyServiceError("the submitting set must be non-empty and without duplicates")
        digest = hashlib.sha256(indices_to_bytes(indices)).digest()
        with self._lock:
            previous = self.issued.get((task_id, round_))
            if previous is not None and previous != (members, digest):
                raise KeyServiceError(
                    f"a key for round {round_} of task {task_id} was issued for another set or support; "
                    "refusing a second one"
                )
            publics = [self.miner_key(a) for a in members]
            key = secagg.functional_key(
                self.backend, self.keys.secret, publics, task_id, round_, indices, self.bits  # type: ignore[arg-type]
            )
            self.issued[(task_id, round_)] = (members, digest)
            return key


def new_credential() -> bytes:
    return secrets.token_bytes(32)


# -- deployment: a small authenticated HTTP front ---------------------------------------------------


def _sign(credential: bytes, body: bytes) -> str:
    return hmac.new(credential, body, hashlib.sha256).hexdigest()


def serve(service: PublisherKeyService, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve ``POST /functional-key`` on ``host:port`` in a daemon thread; returns the server.

    The body is JSON ``{task_id, round, addresses, indices_hex}``; the header ``X-MM-Auth`` carries
    HMAC-SHA256(credential, body). Replies 200 with the key bytes, 403 when refused, 400 when malformed.
    """

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep request bodies out of logs
            return

        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            tag = self.headers.get("X-MM-Auth", "")
            try:
                if self.path != "/functional-key":
                    raise ValueError("unknown path")
                if not hmac.compare_digest(tag, _sign(service.credential, body)):
                    raise KeyServiceError("bad request signature")
                req = json.loads(body)
                indices = indices_from_bytes(bytes.fromhex(req["indices_hex"]), 2**32)
                key = service.functional_key(
                    service.credential, int(req["task_id"]), int(req["round"]), list(req["addresses"]), indices
                )
            except KeyServiceError as exc:
                self._reply(403, str(exc).encode())
                return
            except (ValueError, KeyError, TypeError) as exc:
                self._reply(400, f"malformed request: {exc}".encode())
                return
            self._reply(200, key)

        def _reply(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class RemoteKeyService:
    """The aggregator's client of a key service served by :func:`serve`."""

    url: str
    credential: bytes = field(repr=False)
    timeout: float = 30.0

    def functional_key(
        self, credential: bytes, task_id: int, round_: int, addresses: Sequence[str], indices: np.ndarray
    ) -> bytes:
        import requests

        body = json.dumps(
            {"task_id": task_id, "round": round_, "addresses": sorted(addresses), "indices_hex": indices_to_bytes(indices).hex()}
        ).encode()
        resp = requests.post(
            f"{self.url}/functional-key",
            data=body,
            headers={"X-MM-Auth": _sign(credential, body), "Content-Type": "application/json"},
            timeout=self.timeout,
        )
        if resp.status_code == 403:
            raise KeyServiceError(resp.text)
        resp.raise_for_status()
        return resp.content
