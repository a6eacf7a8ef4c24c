"""The aggregator's side of the publisher's key service: a thin authenticated client, and the
in-process stand-in the simulation uses when one program plays every role.

The key service itself (the only holder of the publisher secret ``s_T``) is the publisher's own
process, ``scripts/key_service.py``; its issuing policy is ``aggregator.key_issuer.KeyIssuer``
(threshold t, the open epoch only, members committed on chain, one durable set per epoch).

Errors: :class:`KeyServiceError` (a ``PermissionError``) when the service refuses — retrying will
not help; :class:`KeyServiceUnavailable` (a ``ConnectionError``) for connection failures, timeouts,
5xx and unauthenticated replies — the round retries within its deadline, then fails (never the run).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from aggregator import secagg
from aggregator.key_issuer import (
    PATH,
    CommitmentSource,
    KeyIssuer,
    KeyRefused,
    KeyRequest,
    Ledger,
    MemoryLedger,
    UnverifiedCommitments,
    reply_tag,
    request_tag,
)
from aggregator.secagg import PublisherKeys


class KeyServiceError(PermissionError):
    """The key service refused the request (policy, credential, malformed); do not retry."""


class KeyServiceUnavailable(ConnectionError):
    """The key service could not be reached or answered unusably; a retry may succeed."""


def new_credential() -> bytes:
    """A fresh 32-byte aggregator credential (shared with the key service out of band)."""
    return secrets.token_bytes(32)


@dataclass
class PublisherKeyService:
    """Simulation only: the publisher's :class:`KeyIssuer` in the server's process (one program plays
    publisher and aggregator). It checks the aggregator credential like the HTTP service does; the
    ledger is in memory unless one is given. Deployment uses ``scripts/key_service.py``."""

    backend: str
    keys: PublisherKeys = field(repr=False)
    credential: bytes = field(repr=False)
    miner_key: Callable[[str], bytes]
    bits: int = secagg.DEFAULT_BITS
    threshold: int = 2
    commitments: CommitmentSource = field(default_factory=UnverifiedCommitments)
    ledger: Ledger = field(default_factory=MemoryLedger)

    def __post_init__(self) -> None:
        threshold = 1 if self.backend == "none" else self.threshold
        self.issuer = KeyIssuer(self.backend, self.keys, self.miner_key, threshold, self.commitments, self.ledger, self.bits)

    @property
    def public(self) -> bytes:
        return self.keys.public

    def functional_key(
        self, credential: bytes, task_id: int, round_: int, attempt: int, addresses: Sequence[str], indices: np.ndarray
    ) -> bytes:
        if not hmac.compare_digest(credential, self.credential):
            raise KeyServiceError("only the task's aggregator may request functional keys")
        try:
            return self.issuer.issue(task_id, round_, attempt, addresses, indices)
        except KeyRefused as exc:
            raise KeyServiceError(str(exc)) from exc
        except Exception as exc:  # chain read failed, ...: like the HTTP service's 500, worth a retry
            raise KeyServiceUnavailable(f"key service internal error: {type(exc).__name__}: {exc}") from exc


@dataclass
class RemoteKeyService:
    """Client of ``scripts/key_service.py``: HMAC-signed requests, replies checked against the request.

    ``url`` is ``https://host:port`` (or ``http://127.0.0.1:port`` on loopback); ``ca_file`` the CA
    (or self-signed certificate) to trust for HTTPS; ``timeout`` per connect/read in seconds."""

    url: str
    credential: bytes = field(repr=False)
    timeout: float = 10.0
    ca_file: str | None = None

    def functional_key(
        self, credential: bytes, task_id: int, round_: int, attempt: int, addresses: Sequence[str], indices: np.ndarray
    ) -> bytes:
        import requests

        body = KeyRequest(task_id, round_, attempt, tuple(addresses), np.asarray(indices)).to_body()
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        tag = request_tag(credential, "POST", PATH, timestamp, nonce, body)
        headers = {
            "Content-Type": "application/json",
            "X-MM-Timestamp": timestamp,
            "X-MM-Nonce": nonce,
            "X-MM-Auth": tag,
        }
        try:
            resp = requests.post(
                self.url.rstrip("/") + PATH, data=body, headers=headers, timeout=self.timeout,
                verify=self.ca_file if self.ca_file else True, allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise KeyServiceUnavailable(f"key service at {self.url} unreachable: {type(exc).__name__}") from exc
        got = resp.headers.get("X-MM-Reply-Auth", "")
        if not hmac.compare_digest(got.encode(), reply_tag(credential, tag, resp.status_code, resp.content).encode()):
            raise KeyServiceUnavailable(f"key service reply (HTTP {resp.status_code}) is not authenticated for this request")
        if resp.status_code == 200:
            return resp.content
        reason = resp.content[:300].decode(errors="replace")
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            raise KeyServiceUnavailable(f"key service HTTP {resp.status_code}: {reason}")
        raise KeyServiceError(f"key service refused (HTTP {resp.status_code}): {reason}")
