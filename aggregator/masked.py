"""Additive-mask secure aggregation modulo 2^w, w = 64 or 32 (DESIGN.md section 4, ``secagg=masked``).

Same key schedule as NDD-FE: ``DH_i = s_i*P_T = s_T*P_i`` (33-byte compressed point). The miner's
mask over the support is the AES-256-CTR keystream (nonce/initial counter block = 16 zero bytes)
under ``key_i = SHA-256(DH_i || taskId || round)`` (taskId 32-byte big-endian, round 8-byte
big-endian), read as ``k`` little-endian uint64 words: word ``p`` masks the ``p``-th index of the
sorted support. A fresh key per (miner, task, round) makes every word a fresh mask.

- encrypt: ``y = uint64(x) + mask mod 2^64`` (``x`` int64 as two's complement);
- key service (publisher): ``K = sum_{i in I} mask_i mod 2^64``;
- decrypt: ``sum_i y_i - K mod 2^64`` reinterpreted as int64; a result outside ``[-bound, bound]``
  raises DecryptionRangeError (a wrong key or set is detected with overwhelming probability).

Byte formats: ciphertext ``b"MMM1" | k:uint32 LE | k * uint64 LE``; key ``b"MMQ1" | k:uint32 LE |
k * uint64 LE``. With 32-bit words (``word_bits=32``, the keystream read as uint32 words; used by
``secagg`` whenever ``bits <= 16``, where any sum of up to 2^15 miners stays below 2^31) the magics
are ``b"MMM2"`` / ``b"MMQ2"`` and the words uint32: half the bytes, the same one-time-pad security
(masks uniform modulo 2^32), and a wrong key still lands outside the range on every coordinate but
with probability ``2*bound/2^32`` each. Pure numpy, no I/O.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from aggregator.bsgs import DecryptionRangeError
from aggregator.nddfe import NddfeError, _check_uint, dh_point

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


def mask_vector(dh: bytes, task_id: int, round_: int, k: int, word_bits: int = 64) -> np.ndarray:
    """The miner's ``k`` masks (uint64, or uint32 with ``word_bits=32``) for (task, round) from ``DH_i``."""
    if not isinstance(dh, bytes | bytearray) or len(dh) != 33:
        raise MaskedError("DH point must be 33 bytes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise MaskedError(f"k must be a non-negative int, got {k!r}")
    key = hashlib.sha256(
        bytes(dh)
        + _check_uint("task_id", task_id, 256).to_bytes(32, "big")
        + _check_uint("round", round_, 64).to_bytes(8, "big")
    ).digest()
    unsigned, _, wire = _word(word_bits)
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = enc.update(bytes(word_bits // 8 * k)) + enc.finalize()
    return np.frombuffer(stream, dtype=wire).astype(unsigned)


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
    task_id: int,
    round_: int,
    miner_secret: bytes,
    publisher_public: bytes,
    max_abs: int = (1 << 14) - 1,
    word_bits: int = 64,
) -> np.ndarray:
    """Mask the quantized int vector ``x`` (one entry per support index, in order) -> uint64 words
    (uint32 with ``word_bits=32``)."""
    xs = np.asarray(x)
    if xs.ndim != 1 or (xs.size and xs.dtype.kind not in "iu"):
        raise MaskedError("x must be a 1-D integer vector")
    xs = xs.astype(np.int64)
    if xs.size and int(np.max(np.abs(xs))) > max_abs:
        raise MaskedError(f"|x| exceeds max_abs={max_abs}")
    unsigned, signed, _ = _word(word_bits)
    mask = mask_vector(dh_point(miner_secret, publisher_public), task_id, round_, xs.size, word_bits)
    return xs.astype(signed).view(unsigned) + mask  # unsigned numpy arithmetic wraps modulo 2^w


def functional_key(
    publisher_secret: bytes, miner_publics: Sequence[bytes], task_id: int, round_: int, k: int, word_bits: int = 64
) -> np.ndarray:
    """``sum_{i in I} mask_i mod 2^w`` for the submitting set ``I``; raises on empty/duplicate sets."""
    pubs = [bytes(p) for p in miner_publics]
    if not pubs:
        raise MaskedError("the submitting set is empty")
    if len(set(pubs)) != len(pubs):
        raise MaskedError("duplicate miner public key in the submitting set")
    total = np.zeros(k, dtype=_word(word_bits)[0])
    for pub in pubs:
        total += mask_vector(dh_point(publisher_secret, pub), task_id, round_, k, word_bits)
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
