"""The publisher's key-issuing policy and the key service's wire protocol (pure: no network, no disk).

The publisher's secret ``s_T`` unmasks any miner whose ciphertext it sees, and a functional key for
a set I unmasks the sum over I. So the key service (``scripts/key_service.py``, the publisher's own
process) issues a key only when all of these hold (:meth:`KeyIssuer.issue`):

1. I has at least ``threshold`` (t >= 2, fixed in the task) distinct members;
2. the epoch (task, round, attempt) is the one open on chain (``CommitmentSource.current_epoch``);
   past and future epochs are refused, and without a chain every epoch below the highest one ever
   issued is refused;
3. every member of I committed on chain in that epoch, and the commit window is closed
   (``CommitmentSource.committed``);
4. no key was issued for that epoch to a different (I, support): a second set would let the
   aggregator subtract two sums. The decision is recorded in the ``Ledger`` (durably, in the
   deployed service) **before** the key is returned, so a restart cannot issue key(I) and then
   key(I minus the victim).

Wire protocol (HTTP, ``POST /v1/functional-key``): body JSON ``{"task_id", "round", "attempt",
"addresses", "indices_hex"}`` (at most ``MAX_BODY_BYTES``, nesting depth ``MAX_JSON_DEPTH``, no
backslash escapes), headers ``X-MM-Timestamp`` (unix seconds), ``X-MM-Nonce`` (32 hex) and
``X-MM-Auth = hex HMAC-SHA256(credential, "MMKS/1 request" \\n method \\n path \\n timestamp \\n nonce
\\n sha256(body))``. The reply carries ``X-MM-Reply-Auth = hex HMAC-SHA256(credential, "MMKS/1 reply"
\\n request tag \\n status \\n sha256(body))``: authenticated and bound to the request it answers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from eth_utils import to_checksum_address

from aggregator import secagg
from aggregator.secagg import PublisherKeys
from aggregator.support import support_hash

PATH = "/v1/functional-key"
MAX_BODY_BYTES = 8 << 20  # indices of a 1M-coordinate support as hex is 8 MB
MAX_JSON_DEPTH = 4
REPLAY_WINDOW_S = 120


class KeyRefused(PermissionError):
    """The key service refuses this request (policy, authentication or malformed input); not retried."""


class MalformedKeyRequest(KeyRefused):
    """A request body that is too large, too deep or not the expected JSON (HTTP 400)."""


class CommitmentSource(Protocol):
    """Who committed in which epoch: the chain (deployment) or, without one, nothing to check."""

    def current_epoch(self, task_id: int) -> tuple[int, int] | None:
        """(round, attempt) open on chain for ``task_id``; None when there is no chain to ask."""
        ...

    def committed(self, task_id: int, round_: int, attempt: int) -> frozenset[str] | None:
        """Checksummed addresses that committed in that epoch once its commit window closed; None when
        there is no chain to ask. Raises KeyRefused while the window is still open."""
        ...


class UnverifiedCommitments:
    """No chain (simulation ``chain=none``): the set is the aggregator's claim. Threshold, one set per
    epoch and monotonic epochs still hold; membership is NOT verified (documented in docs/crypto.md)."""

    def current_epoch(self, task_id: int) -> tuple[int, int] | None:
        return None

    def committed(self, task_id: int, round_: int, attempt: int) -> frozenset[str] | None:
        return None


class CommitmentReader(Protocol):
    def round_state(self, task_id: int) -> dict: ...

    def committed_miners(self, task_id: int, round_: int, attempt: int) -> Sequence[str] | None: ...


@dataclass
class ChainCommitments:
    """The chain's view through ``reader`` (a ``contracts.client.ModelMineClient``): the open epoch is
    RoundState (round, epoch); the committed set is ``reader.committed_miners(task, round, epoch)``,
    None while the commit window is open."""

    reader: CommitmentReader

    def current_epoch(self, task_id: int) -> tuple[int, int] | None:
        rs = self.reader.round_state(task_id)
        return int(rs["round"]), int(rs["epoch"])

    def committed(self, task_id: int, round_: int, attempt: int) -> frozenset[str] | None:
        members = self.reader.committed_miners(task_id, round_, attempt)
        if members is None:
            raise KeyRefused(f"the commit window of task {task_id} round {round_} attempt {attempt} is still open")
        return frozenset(to_checksum_address(a) for a in members)


@dataclass(frozen=True)
class Issued:
    members: tuple[str, ...]
    support_hash: bytes


class Ledger(Protocol):
    """Which (I, support) each epoch's key was issued for. ``record`` must be durable when it returns."""

    def lookup(self, task_id: int, round_: int, attempt: int) -> Issued | None: ...

    def highest(self, task_id: int) -> tuple[int, int] | None: ...

    def record(self, task_id: int, round_: int, attempt: int, issued: Issued) -> None: ...


@dataclass
class MemoryLedger:
    """In-memory ledger (simulation, tests); the deployed service uses ``scripts/key_service.py``'s SQLite one."""

    rows: dict[tuple[int, int, int], Issued] = field(default_factory=dict)

    def lookup(self, task_id: int, round_: int, attempt: int) -> Issued | None:
        return self.rows.get((task_id, round_, attempt))

    def highest(self, task_id: int) -> tuple[int, int] | None:
        keys = [(r, a) for (t, r, a) in self.rows if t == task_id]
        return max(keys) if keys else None

    def record(self, task_id: int, round_: int, attempt: int, issued: Issued) -> None:
        self.rows[(task_id, round_, attempt)] = issued


@dataclass
class KeyIssuer:
    """Derives functional keys from ``s_T`` under the policy of the module docstring.

    ``miner_key(address)`` returns a registered miner's 33-byte secure-aggregation key (raises for an
    unknown one); ``bits`` is the task's quantization (fixes the masked word size)."""

    backend: str
    keys: PublisherKeys = field(repr=False)
    miner_key: Callable[[str], bytes]
    threshold: int
    commitments: CommitmentSource
    ledger: Ledger
    bits: int = secagg.DEFAULT_BITS
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.backend not in secagg.BACKENDS:
            raise ValueError(f"backend must be one of {secagg.BACKENDS}, got {self.backend!r}")
        if self.threshold < (1 if self.backend == "none" else 2):
            raise ValueError(f"threshold must be >= 2 for an encrypted backend, got {self.threshold}")

    @property
    def public(self) -> bytes:
        return self.keys.public

    def issue(self, task_id: int, round_: int, attempt: int, addresses: Sequence[str], indices: np.ndarray) -> bytes:
        """The key for the sum over ``addresses`` on ``indices`` in epoch (task, round, attempt), where
        ``attempt`` is the value masks are bound to (``RoundPlan.crypto_round``). The same request
        again returns the same key. Raises KeyRefused naming the rule that failed."""
        try:
            members = tuple(sorted(to_checksum_address(a) for a in addresses))
        except (TypeError, ValueError) as exc:
            raise KeyRefused(f"malformed address in the set: {exc}") from exc
        if len(set(members)) != len(members):
            raise KeyRefused("the submitting set has duplicates")
        if len(members) < self.threshold:
            raise KeyRefused(f"the set has {len(members)} members; the task's threshold is t={self.threshold}")
        try:
            digest = support_hash(indices)
        except ValueError as exc:
            raise KeyRefused(f"malformed support: {exc}") from exc
        epoch = (int(round_), int(attempt))
        current = self.commitments.current_epoch(task_id)
        if current is not None and epoch != current:
            raise KeyRefused(f"epoch (round {round_}, attempt {attempt}) is not the open one on chain {current}")
        wanted = Issued(members, digest)
        with self._lock:
            previous = self.ledger.lookup(task_id, *epoch)
            if previous is not None:
                if previous != wanted:
                    raise KeyRefused(
                        f"a key for task {task_id} round {round_} attempt {attempt} was issued for another set "
                        "or support; refusing a second one"
                    )
            else:
                highest = self.ledger.highest(task_id)
                if highest is not None and epoch < highest:
                    raise KeyRefused(f"epoch {epoch} of task {task_id} is past (highest issued: {highest})")
                committed = self.commitments.committed(task_id, *epoch)
                if committed is not None:
                    missing = sorted(set(members) - committed)
                    if missing:
                        raise KeyRefused(f"not committed on chain in this epoch: {', '.join(missing)}")
            try:
                publics = [self.miner_key(a) for a in members]
            except (KeyError, ValueError) as exc:
                raise KeyRefused(f"unknown miner in the set: {exc}") from exc
            if previous is None:
                self.ledger.record(task_id, *epoch, wanted)  # durable before the key exists
        return secagg.functional_key(
            self.backend, self.keys.secret, publics, task_id, int(attempt), indices, self.bits  # type: ignore[arg-type]
        )


# -- wire protocol ------------------------------------------------------------------------------


def request_tag(credential: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    """HMAC-SHA256 over method, path, timestamp, nonce and the body's SHA-256 (hex)."""
    msg = "\n".join(["MMKS/1 request", method, path, timestamp, nonce, hashlib.sha256(body).hexdigest()])
    return hmac.new(credential, msg.encode(), hashlib.sha256).hexdigest()


def reply_tag(credential: bytes, request: str, status: int, body: bytes) -> str:
    """HMAC-SHA256 binding a reply (status, body) to the request tag it answers (hex)."""
    msg = "\n".join(["MMKS/1 reply", request, str(int(status)), hashlib.sha256(body).hexdigest()])
    return hmac.new(credential, msg.encode(), hashlib.sha256).hexdigest()


def json_depth(raw: bytes) -> int:
    """Nesting depth of a JSON text without parsing it (vectorized; bodies with backslash escapes are
    refused, ours never need one, so every ``"`` toggles a string)."""
    arr = np.frombuffer(raw, dtype=np.uint8)
    if np.any(arr == ord("\\")):
        raise MalformedKeyRequest("escapes are not allowed in a key request")
    in_string = (np.cumsum(arr == ord('"')) % 2).astype(bool)
    opens = ((arr == ord("[")) | (arr == ord("{"))) & ~in_string
    closes = ((arr == ord("]")) | (arr == ord("}"))) & ~in_string
    depth = np.cumsum(opens.astype(np.int64) - closes.astype(np.int64))
    return int(depth.max()) if depth.size else 0


@dataclass(frozen=True)
class KeyRequest:
    task_id: int
    round: int
    attempt: int
    addresses: tuple[str, ...]
    indices: np.ndarray

    def to_body(self) -> bytes:
        from aggregator.protocol import indices_to_bytes

        return json.dumps(
            {
                "task_id": self.task_id,
                "round": self.round,
                "attempt": self.attempt,
                "addresses": sorted(self.addresses),
                "indices_hex": indices_to_bytes(self.indices).hex(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_body(cls, raw: bytes, max_bytes: int = MAX_BODY_BYTES) -> KeyRequest:
        """Parse a body whose size and depth are checked before ``json.loads``; KeyRefused on anything odd."""
        from aggregator.protocol import ProtocolError, indices_from_bytes

        if len(raw) > max_bytes:
            raise MalformedKeyRequest(f"body of {len(raw)} bytes exceeds {max_bytes}")
        if json_depth(raw) > MAX_JSON_DEPTH:
            raise MalformedKeyRequest(f"JSON nested deeper than {MAX_JSON_DEPTH}")
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or set(data) != {"task_id", "round", "attempt", "addresses", "indices_hex"}:
                raise ValueError("expected exactly task_id, round, attempt, addresses, indices_hex")
            ints = [data["task_id"], data["round"], data["attempt"]]
            if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64 for v in ints):
                raise ValueError("task_id, round and attempt must be uint64")
            if not isinstance(data["addresses"], list) or not all(isinstance(a, str) for a in data["addresses"]):
                raise ValueError("addresses must be a list of strings")
            if not isinstance(data["indices_hex"], str):
                raise ValueError("indices_hex must be a string")
            indices = indices_from_bytes(bytes.fromhex(data["indices_hex"]), 2**32)
        except (ValueError, ProtocolError, UnicodeDecodeError) as exc:
            raise MalformedKeyRequest(f"malformed request: {exc}") from exc
        return cls(int(ints[0]), int(ints[1]), int(ints[2]), tuple(data["addresses"]), indices)
