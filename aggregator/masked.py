"""Additive-mask secure aggregation modulo 2^w, w = 64 or 32 (DESIGN.md section 4, ``secagg=masked``).

Same key schedule as NDD-FE: ``DH_i = s_i*P_T = s_T*P_i`` (33-byte compressed point). The miner's
key for an epoch is ``key_i = SHA-256("masked/k" || DH_i || taskId || epoch || supportHash)``
(taskId 32-byte big-endian, epoch 8-byte big-endian, supportHash = keccak256 of the sorted support
as uint32 LE, see ``aggregator.support.support_hash``). The mask of the **global** coordinate ``j``
is the first ``w/8`` bytes (little-endian) of the AES-256 block ``AES_{key_i}(j)``, ``j`` as a
16-byte big-endian counter block, i.e. block ``j`` of the AES-CTR keystream under ``key_i``. A mask
is therefore bound to (miner, task, epoch, support, coordinate): two plans of one epoch with
different supports share no mask, and the same coordinate never gets the mask of another one.

- encrypt: ``y = uint(x) + mask mod 2^w`` (``x`` as two's complement);
- key service (publisher): ``K = sum_{i in I} mask_i mod 2^w``;
- decrypt: ``sum_i y_i - K mod 2^w`` reinterpreted as signed; a result outside ``[-bound, bound]``
  raises DecryptionRangeError (a wrong key or set is detected with overwhelming probability).

Byte formats: ciphertext ``b"MMM1" | k:uint32 LE | k * uint64 LE``; key ``b"MMQ1" | k:uint32 LE |
k * uint64 LE``. With 32-bit words (``word_bits=32``; used by ``secagg`` whenever ``bits <= 16``,
where any sum of up to 2^15 miners stays below 2^31) the magics are ``b"MMM2"`` / ``b"MMQ2"`` and
the words uint32: half the bytes, the same one-time-pad security (masks uniform modulo 2^32), and a
wrong key still lands outside the range on every coordinate but with probability ``2*bound/2^32``
each. Pure numpy, no I/O.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from aggregator.bsgs import DecryptionRangeError
from aggregator.nddfe import NddfeError, _check_indices, _check_uint, dh_point
from aggregator.support import support_hash

CIPHERTEXT_MAGIC = b"MMM1"
KEY_MAGIC = b"MMQ1"
CIPHERTEXT_MAGIC_32 = b"MMM2"
KEY_MAGIC_32 = b"MMQ2"
_WORDS = {64: (np.uint64, np.int64, "<u8"), 32: (np.uint32, np.int32, "<u4")}
_MAGICS = {CIPHERTEXT_MAGIC: 64, KEY_MAGIC: 64, CIPHERTEXT_MAGIC_32: 32, KEY_MAGIC_32: 32}


def _word(word_bits: int) -> tuple[type, type, str]:
    if word_bits not in _WORDS:
        raise MaskedError(f"word_bits must be 32 or 64, got {word_bits!r}")
    return _WORDS[word_bits]
_HEADER = struct.Struct("<4sI")

__all__ = [
    "DecryptionRangeError",
    "MaskedError",
    "ciphertext_from_bytes",
    "ciphertext_to_bytes",
    "decrypt_sum",
    "encrypt",
    "functional_key",
    "key_from_bytes",
    "key_to_bytes",
    "mask_vector",
]


class MaskedError(NddfeError):
    """Malformed input to the masked backend (bad bytes, sizes, dtypes, ranges)."""


def mask_vector(dh: bytes, task_id: int, round_: int, indices: np.ndarray, word_bits: int = 64) -> np.ndarray:
    """The miner's masks (uint64, or uint32 with ``word_bits=32``) for (task, epoch ``round_``), one
    per global coordinate in ``indices`` (the whole sorted support: its hash keys the masks)."""
    if not isinstance(dh, bytes | bytearray) or len(dh) != 33:
        raise MaskedError("DH point must be 33 bytes")
    idx = _check_indices(indices)
    key = hashlib.sha256(
        b"masked/k"
        + bytes(dh)
        + _check_uint("task_id", task_id, 256).to_bytes(32, "big")
        + _check_uint("round", round_, 64).to_bytes(8, "big")
        + support_hash(idx)
    ).digest()
    unsigned, _, wire = _word(word_bits)
    blocks = np.zeros((idx.size, 16), dtype=np.uint8)
    blocks[:, 8:] = idx.astype(">u8").view(np.uint8).reshape(-1, 8)  # j as a 16-byte big-endian block
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # ECB on counter blocks = CTR keystream
    stream = np.frombuffer(enc.update(blocks.tobytes()) + enc.finalize(), dtype=np.uint8).reshape(-1, 16)
    width = word_bits // 8
    return np.ascontiguousarray(stream[:, :width]).view(wire).reshape(-1).astype(unsigned)


def _pack(magic: bytes, words: np.ndarray) -> bytes:
    wire = _word(_MAGICS[magic])[2]
    return _HEADER.pack(magic, words.size) + words.astype(wire).tobytes()


def _unpack(magic: bytes, data: bytes, what: str, expected_k: int | None) -> np.ndarray:
    """Parse ``data`` whose magic is ``magic`` or its other-word-size twin; returns the words."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MaskedError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise MaskedError(f"{what} shorter than its header")
    got, k = _HEADER.unpack_from(data)
    twins = {CIPHERTEXT_MAGIC: CIPHERTEXT_MAGIC_32, KEY_MAGIC: KEY_MAGIC_32}
    if got not in (magic, twins.get(magic)):
        raise MaskedError(f"not a masked {what} (magic {got!r})")
    if expected_k is not None and k != expected_k:
        raise MaskedError(f"{what} has k={k}, expected {expected_k}")
    unsigned, _, wire = _word(_MAGICS[got])
    size = _HEADER.size + np.dtype(wire).itemsize * k
    if len(data) != size:
        raise MaskedError(f"{what} is {len(data)} bytes, expected {size}")
    return np.frombuffer(data, dtype=wire, offset=_HEADER.size).astype(unsigned)


def ciphertext_to_bytes(y: np.ndarray) -> bytes:
    return _pack(CIPHERTEXT_MAGIC_32 if y.dtype == np.uint32 else CIPHERTEXT_MAGIC, y)


def ciphertext_from_bytes(data: bytes, expected_k: int | None = None) -> np.ndarray:
    """Parse a masked ciphertext into uint64 words; raises MaskedError when malformed."""
    return _unpack(CIPHERTEXT_MAGIC, data, "ciphertext", expected_k)


def key_to_bytes(key: np.ndarray) -> bytes:
    return _pack(KEY_MAGIC_32 if key.dtype == np.uint32 else KEY_MAGIC, key)


def key_from_bytes(data: bytes, expected_k: int | None = None) -> np.ndarray:
    """Parse a masked functional key into uint64 words; raises MaskedError when malformed."""
    return _unpack(KEY_MAGIC, data, "functional key", expected_k)


def encrypt(
    x: np.ndarray,
    indices: np.ndarray,
    task_id: int,
    round_: int,
    miner_secret: bytes,
    publisher_public: bytes,
    max_abs: int = (1 << 14) - 1,
    word_bits: int = 64,
) -> np.ndarray:
    """Mask the quantized int vector ``x`` (``x[p]`` belongs to global coordinate ``indices[p]``)
    -> uint64 words (uint32 with ``word_bits=32``)."""
    xs = np.asarray(x)
    if xs.ndim != 1 or (xs.size and xs.dtype.kind not in "iu"):
        raise MaskedError("x must be a 1-D integer vector")
    if np.asarray(indices).shape != xs.shape:
        raise MaskedError(f"x has shape {xs.shape}, indices {np.asarray(indices).shape}")
    xs = xs.astype(np.int64)
    if xs.size and int(np.max(np.abs(xs))) > max_abs:
        raise MaskedError(f"|x| exceeds max_abs={max_abs}")
    unsigned, signed, _ = _word(word_bits)
    mask = mask_vector(dh_point(miner_secret, publisher_public), task_id, round_, indices, word_bits)
    return xs.astype(signed).view(unsigned) + mask  # unsigned numpy arithmetic wraps modulo 2^w


def functional_key(
    publisher_secret: bytes,
    miner_publics: Sequence[bytes],
    task_id: int,
    round_: int,
    indices: np.ndarray,
    word_bits: int = 64,
) -> np.ndarray:
    """``sum_{i in I} mask_i mod 2^w`` over the support ``indices`` for the submitting set ``I``;
    raises on empty/duplicate sets."""
    pubs = [bytes(p) for p in miner_publics]
    if not pubs:
        raise MaskedError("the submitting set is empty")
    if len(set(pubs)) != len(pubs):
        raise MaskedError("duplicate miner public key in the submitting set")
    idx = _check_indices(indices)
    total = np.zeros(idx.size, dtype=_word(word_bits)[0])
    for pub in pubs:
        total += mask_vector(dh_point(publisher_secret, pub), task_id, round_, idx, word_bits)
    return total


def decrypt_sum(ciphertexts: Sequence[np.ndarray], key: np.ndarray, bound: int) -> np.ndarray:
    """``sum_i y_i - key`` as int64; raises DecryptionRangeError if any ``|value| > bound``.
    Ciphertexts and key must share one word size (uint64 or uint32)."""
    if not ciphertexts:
        raise MaskedError("no ciphertexts to decrypt")
    k = key.size
    if key.dtype not in (np.uint64, np.uint32):
        raise MaskedError(f"key has dtype {key.dtype}, expected uint64 or uint32")
    signed = np.int64 if key.dtype == np.uint64 else np.int32
    total = np.zeros(k, dtype=key.dtype)
    for i, y in enumerate(ciphertexts):
        if y.dtype != key.dtype or y.shape != (k,):
            raise MaskedError(f"ciphertext #{i} has {y.dtype}{y.shape}, expected {key.dtype}({k},)")
        total += y
    out = (total - key).view(signed).astype(np.int64)
    bad = np.flatnonzero((out > bound) | (out < -bound))  # not abs(): abs(INT64_MIN) < 0
    if bad.size:
        raise DecryptionRangeError(
            f"{bad.size} of {k} coordinates decrypt outside [-{bound}, {bound}] "
            f"(first at position {int(bad[0])}): wrong functional key or ciphertext set",
            bad,
        )
    return out
