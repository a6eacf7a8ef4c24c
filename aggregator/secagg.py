"""One interface over the secure-aggregation backends ``none``, ``masked`` and ``nddfe``.

The Flower strategy and the miner call only these functions; every payload is ``bytes``:

- miner:      ``ct = encrypt(backend, x_int, indices, task_id, round_, miner_secret, P_T, P_A)``
- publisher:  ``key = functional_key(backend, s_T, [P_i for i in I], task_id, round_, indices)``
              (after the deadline, once per (task, round, I): never for two different sets I)
- aggregator: ``total = decrypt_sum(backend, [ct_i for i in I], key, n=len(I), bits=b,
              publisher_public=P_T, aggregator_public=P_A)`` -> int64 sums, one per support index.

Contract: ``decrypt_sum`` returns exactly ``sum_{i in I} x_i`` when the key was derived for the same
(task, round, support, I) as the ciphertexts; otherwise it raises ``DecryptionRangeError`` (for
``none`` there is nothing to check). ``x_int`` must hold quantized values with
``|x| <= 2^(bits-1) - 1``, one per support index (``indices`` sorted, unique). The order of
``miner_publics`` and ``ciphertexts`` does not matter, the set does. Malformed bytes raise a
``SecAggError`` subclass (``MalformedCiphertextError``, ``MalformedKeyError``, ``MaskedError``).

Keys: every party has a secp256k1 key pair (32-byte secret, 33-byte compressed public); ``none``
ignores them. The ``masked`` and ``nddfe`` keys are separate from Ethereum keys.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from eth_utils import keccak

from aggregator import masked, nddfe
from aggregator.bsgs import DEFAULT_MAX_TABLE, CryptoError, DecryptionRangeError
from aggregator.nddfe import KeyPair, MalformedCiphertextError, MalformedKeyError, NddfeError

Backend = Literal["none", "masked", "nddfe", "secaggplus"]
BACKENDS: tuple[str, ...] = ("none", "masked", "nddfe")  # one-shot: encrypt / functional_key / decrypt_sum
INTERACTIVE_BACKENDS: tuple[str, ...] = ("secaggplus",)  # multi-stage: aggregator.secaggplus drives it
ALL_BACKENDS: tuple[str, ...] = get_args(Backend)
DEFAULT_BITS = 15

PLAIN_MAGIC = b"MMP1"
PLAIN_KEY_MAGIC = b"MMZ1"
_HEADER = struct.Struct("<4sI")

__all__ = [
    "BACKENDS",
    "CryptoError",
    "AggregatorKeys",
    "Backend",
    "DecryptionRangeError",
    "MalformedCiphertextError",
    "MalformedKeyError",
    "MinerKeys",
    "PublisherKeys",
    "SecAggError",
    "ciphertext_hash",
    "ciphertext_size",
    "decrypt_sum",
    "encrypt",
    "functional_key",
    "sum_bound",
]

SecAggError = CryptoError
"""Base class of every error raised here (alias of ``bsgs.CryptoError``, a ValueError): malformed
input and ``DecryptionRangeError`` alike, so ``except SecAggError`` fails the round cleanly."""


class UnknownBackendError(NddfeError):
    """A backend name that is not one of ``none``, ``masked``, ``nddfe``."""


class MinerKeys(KeyPair):
    """A miner's secure-aggregation key pair ``(s_i, P_i)``; ``P_i`` is registered on chain."""


class PublisherKeys(KeyPair):
    """The task publisher's key pair ``(s_T, P_T)``; ``s_T`` lives only in its key service."""


class AggregatorKeys(KeyPair):
    """The aggregator's key pair ``(s_A, P_A)``; decryption needs only ``P_A``."""


def masked_word_bits(bits: int) -> int:
    """Word size of the masked backend: 32 when ``bits <= 16`` (sums of up to 2^15 miners fit in
    int32), else 64."""
    return 32 if _max_abs(bits) < (1 << 15) else 64


def _backend(backend: str, interactive_ok: bool = False) -> str:
    if backend in INTERACTIVE_BACKENDS and not interactive_ok:
        raise UnknownBackendError(f"secagg backend {backend!r} is interactive: run its stages (aggregator.secaggplus)")
    if backend not in ALL_BACKENDS:
        raise UnknownBackendError(f"unknown secagg backend {backend!r}; expected one of {ALL_BACKENDS}")
    return backend


def _max_abs(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 31:
        raise SecAggError(f"bits must be an int in [2, 31], got {bits!r}")
    return (1 << (bits - 1)) - 1


def sum_bound(n: int, bits: int = DEFAULT_BITS) -> int:
    """Largest ``|sum|`` of ``n`` quantized values: ``n * (2^(bits-1) - 1)``."""
    return n * _max_abs(bits)


def _require(value: bytes | None, what: str, backend: str) -> bytes:
    if value is None:
        raise MalformedKeyError(f"backend {backend!r} needs {what}")
    return value


def _indices(indices: np.ndarray, k: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size != k:
        raise SecAggError(f"indices must be 1-D with one entry per value ({k}), got shape {idx.shape}")
    return idx


def encrypt(
    backend: Backend,
    x_int: np.ndarray,
    indices: np.ndarray,
    task_id: int,
    round_: int,
    miner_secret: bytes | None = None,
    publisher_public: bytes | None = None,
    aggregator_public: bytes | None = None,
    bits: int = DEFAULT_BITS,
) -> bytes:
    """Encrypt one miner's quantized values on the support ``indices``; returns the wire bytes.

    ``none`` needs no keys; ``masked`` needs ``miner_secret`` and ``publisher_public``; ``nddfe``
    needs all three keys. Raises SecAggError subclasses on bad input (including ``|x|`` too large).
    """
    _backend(backend)
    bound = _max_abs(bits)
    xs = np.asarray(x_int)
    if xs.ndim != 1 or (xs.size and xs.dtype.kind not in "iu"):
        raise SecAggError(f"x_int must be a 1-D integer vector, got {xs.dtype}{xs.shape}")
    idx = _indices(indices, xs.size)
    if backend == "none":
        if xs.size and int(np.max(np.abs(xs.astype(np.int64)))) > bound:
            raise SecAggError(f"|x| exceeds 2^(bits-1)-1 = {bound}")
        return _HEADER.pack(PLAIN_MAGIC, xs.size) + xs.astype("<i4").tobytes()
    secret = _require(miner_secret, "miner_secret", backend)
    pt = _require(publisher_public, "publisher_public", backend)
    if backend == "masked":
        nddfe._check_indices(idx)
        y = masked.encrypt(xs, idx, task_id, round_, secret, pt, max_abs=bound, word_bits=masked_word_bits(bits))
        return masked.ciphertext_to_bytes(y)
    pa = _require(aggregator_public, "aggregator_public", backend)
    return nddfe.encrypt(xs, idx, task_id, round_, secret, pt, pa, max_abs=bound).to_bytes()


def functional_key(
    backend: Backend,
    publisher_secret: bytes | None,
    miner_publics: Sequence[bytes],
    task_id: int,
    round_: int,
    indices: np.ndarray,
    bits: int = DEFAULT_BITS,
) -> bytes:
    """The publisher's decryption key for the submitting set given by ``miner_publics`` (``bits``:
    the round's quantization, which fixes the masked backend's word size).

    Returns wire bytes for ``decrypt_sum``. ``none`` returns a key-less header. Raises SecAggError on
    an empty or duplicated set or malformed keys.
    """
    _backend(backend)
    idx = np.asarray(indices)
    if backend == "none":
        return _HEADER.pack(PLAIN_KEY_MAGIC, int(idx.size))
    secret = _require(publisher_secret, "publisher_secret", backend)
    nddfe._check_indices(idx)
    if backend == "masked":
        words = masked_word_bits(bits)
        return masked.key_to_bytes(masked.functional_key(secret, miner_publics, task_id, round_, idx, words))
    return nddfe.functional_key(secret, miner_publics, task_id, round_, idx).to_bytes()


def _plain_values(data: bytes, k: int | None) -> np.ndarray:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedCiphertextError(f"ciphertext must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise MalformedCiphertextError("plaintext payload shorter than its header")
    magic, got = _HEADER.unpack_from(data)
    if magic != PLAIN_MAGIC:
        raise MalformedCiphertextError(f"not a plaintext payload (magic {magic!r})")
    if k is not None and got != k:
        raise MalformedCiphertextError(f"payload has k={got}, expected {k}")
    if len(data) != _HEADER.size + 4 * got:
        raise MalformedCiphertextError(f"payload is {len(data)} bytes, expected {_HEADER.size + 4 * got}")
    return np.frombuffer(data, dtype="<i4", offset=_HEADER.size).astype(np.int64)


def _key_k(backend: str, key: bytes) -> int:
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) < _HEADER.size:
        raise MalformedKeyError("functional key must be bytes with a header")
    magic, k = _HEADER.unpack_from(bytes(key))
    expected = {"none": (PLAIN_KEY_MAGIC,), "masked": (masked.KEY_MAGIC, masked.KEY_MAGIC_32), "nddfe": (nddfe.KEY_MAGIC,)}
    if magic not in expected[backend]:
        raise MalformedKeyError(f"functional key magic {magic!r} does not belong to backend {backend!r}")
    return int(k)


def decrypt_sum(
    backend: Backend,
    ciphertexts: Sequence[bytes],
    key: bytes,
    n: int,
    bits: int = DEFAULT_BITS,
    *,
    publisher_public: bytes | None = None,
    aggregator_public: bytes | None = None,
    max_table: int = DEFAULT_MAX_TABLE,
    workers: int = 1,
) -> np.ndarray:
    """Sum of the ``n`` miners' values (int64, one per support index) from their ciphertexts.

    ``n`` must equal ``len(ciphertexts)`` (it fixes the recoverable range ``n * (2^(bits-1)-1)``).
    ``nddfe`` needs ``publisher_public`` and ``aggregator_public``. Raises DecryptionRangeError when
    the key does not match the ciphertext set (or a sum is out of range), MalformedCiphertextError /
    MalformedKeyError / MaskedError on malformed bytes. Never returns a silent 0 for a failed coordinate.
    ``max_table`` caps the BSGS baby-step table; ``workers > 1`` runs NDD-FE point arithmetic in a
    spawned process pool (pays for ``n*k`` above ~200,000 on 2 cores).
    """
    _backend(backend)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SecAggError(f"n must be a positive int, got {n!r}")
    if len(ciphertexts) != n:
        raise SecAggError(f"n={n} but {len(ciphertexts)} ciphertexts were given")
    bound = sum_bound(n, bits)
    k = _key_k(backend, key)
    if backend == "none":
        total = np.zeros(k, dtype=np.int64)
        for ct in ciphertexts:
            total += _plain_values(ct, k)
        bad = np.flatnonzero(np.abs(total) > bound)
        if bad.size:
            raise DecryptionRangeError(f"{bad.size} plaintext sums exceed the bound {bound}", bad)
        return total
    if backend == "masked":
        ys = [masked.ciphertext_from_bytes(ct, k) for ct in ciphertexts]
        return masked.decrypt_sum(ys, masked.key_from_bytes(key, k), bound)
    pt = _require(publisher_public, "publisher_public", backend)
    pa = _require(aggregator_public, "aggregator_public", backend)
    cts = [nddfe.NddfeCiphertext.from_bytes(ct, k) for ct in ciphertexts]
    fk = nddfe.FunctionalKey.from_bytes(key, k)
    return nddfe.decrypt_sum(cts, fk, pt, pa, bound, max_table=max_table, workers=workers)


def ciphertext_size(backend: Backend, k: int, bits: int = DEFAULT_BITS) -> int:
    """Exact wire size in bytes of one miner's ciphertext over ``k`` coordinates."""
    _backend(backend, interactive_ok=True)
    if backend == "none":
        return _HEADER.size + 4 * k
    if backend in ("masked", "secaggplus"):  # secaggplus sends the masked format
        return _HEADER.size + masked_word_bits(bits) // 8 * k
    return nddfe.NddfeCiphertext.size_for(k)


def ciphertext_hash(ciphertext: bytes) -> bytes:
    """``keccak256`` of the ciphertext bytes: the ``ciphertextHash`` field of the EIP-712 Submission."""
    return keccak(bytes(ciphertext))
