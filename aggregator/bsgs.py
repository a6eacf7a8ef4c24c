"""Bounded discrete logarithms on secp256k1 by baby-step giant-step, plus raw point helpers.

Given points ``Q_j = v_j * P`` with ``|v_j| <= bound`` (``P`` a fixed base, e.g. the aggregator key
``P_A``), recover the integers ``v_j``. Used by NDD-FE decryption (DESIGN.md section 4).

Table (cached per ``(P, m)``, built once): the compressed encodings of ``v*P`` for ``v = 1..m``,
keyed by a 64-bit integer = the first 8 bytes of the x coordinate read as little-endian uint64,
sorted in a numpy array. Because ``-v*P`` has the same x coordinate as ``v*P`` (only the parity
byte differs), one entry answers both ``+v`` and ``-v``: the sign comes from the parity byte.
A key hit is always verified against the full 32-byte x coordinate.

Lookup is vectorized over all coordinates (``np.searchsorted``). Values with ``|v| > m`` are found
by giant steps: ``Q - s*t*(2m+1)*P`` for ``t = 1, 2, ...`` and ``s = +1, -1`` until ``|v| <= bound``
is exhausted. The identity point (``v = 0``) cannot be represented by libsecp256k1; callers pass it
as a flag and it decodes to 0. A value outside ``[-bound, bound]`` raises DecryptionRangeError,
it never decodes to 0.
"""

from __future__ import annotations

import functools

import numpy as np
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
POINT_SIZE = 33
DEFAULT_MAX_TABLE = 1 << 18  # 262,144 baby steps (~11 MB, ~1 s to build on a 2-core VM)
_EC_COMPRESSED = 258  # SECP256K1_EC_COMPRESSED flag
_CTX = GLOBAL_CONTEXT.ctx


class CryptoError(ValueError):
    """Root of every error raised by the secure-aggregation modules (``secagg.SecAggError``)."""


class PointError(CryptoError):
    """Bytes that are not a valid compressed secp256k1 point (wrong length, type or off-curve)."""


class DecryptionRangeError(CryptoError, ArithmeticError):
    """A decrypted value lies outside the recoverable range ``[-bound, bound]``.

    Raised for a wrong functional key, a ciphertext from another round/set, or an overflowing sum;
    ``positions`` lists the offending coordinate positions (within the support)."""

    def __init__(self, message: str, positions: np.ndarray | None = None) -> None:
        super().__init__(message)
        self.positions = positions if positions is not None else np.empty(0, dtype=np.int64)


class BSGSError(CryptoError):
    """The baby-step table could not be built (e.g. a 64-bit key collision, probability ~2^-30)."""


def scalar_bytes(value: int) -> bytes:
    """``value mod n`` as 32 big-endian bytes; raises ValueError when it is 0 mod n."""
    value %= CURVE_ORDER
    if value == 0:
        raise ValueError("scalar is 0 mod the curve order")
    return value.to_bytes(32, "big")


def parse_point(data: bytes, what: str = "point") -> object:
    """Parse a 33-byte compressed point into a fresh ``secp256k1_pubkey *``; raises PointError."""
    if not isinstance(data, bytes | bytearray):
        raise PointError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) != POINT_SIZE:
        raise PointError(f"{what} must be {POINT_SIZE} bytes (compressed), got {len(data)}")
    if data[0] not in (2, 3):
        raise PointError(f"{what} is not a compressed point (prefix 0x{data[0]:02x})")
    out = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_parse(_CTX, out, bytes(data), POINT_SIZE):
        raise PointError(f"{what} is not on secp256k1")
    return out


def serialize_point(raw: object) -> bytes:
    """33-byte compressed encoding of a ``secp256k1_pubkey *``."""
    buf = ffi.new("unsigned char[33]")
    ln = ffi.new("size_t *", POINT_SIZE)
    lib.secp256k1_ec_pubkey_serialize(_CTX, buf, ln, raw, _EC_COMPRESSED)
    return bytes(buf)


def multiply(raw: object, scalar32: bytes) -> object:
    """Fresh ``secp256k1_pubkey *`` holding ``scalar * point``; scalar must be in [1, n-1]."""
    out = ffi.new("secp256k1_pubkey *")
    ffi.memmove(out, raw, 64)
    if not lib.secp256k1_ec_pubkey_tweak_mul(_CTX, out, scalar32):
        raise ValueError("scalar out of range for point multiplication")
    return out


def negate(raw: object) -> object:
    """Fresh ``secp256k1_pubkey *`` holding ``-point``."""
    out = ffi.new("secp256k1_pubkey *")
    ffi.memmove(out, raw, 64)
    lib.secp256k1_ec_pubkey_negate(_CTX, out)
    return out


def point_mul_bytes(point: bytes, scalar: int) -> bytes:
    """Compressed ``scalar * point`` (scalar reduced mod n, must be non-zero)."""
    return serialize_point(multiply(parse_point(point), scalar_bytes(scalar)))


def _keys_of(compressed: np.ndarray) -> np.ndarray:
    """64-bit lookup keys (first 8 x-bytes, little-endian) of an ``(m, 33)`` uint8 array."""
    return np.ascontiguousarray(compressed[:, 1:9]).view("<u8").ravel()


@functools.lru_cache(maxsize=16)
def small_multiples(base: bytes, bound: int) -> tuple[object, list[object]]:
    """Cached raw points ``v*base`` for ``v`` in ``[-bound, bound]`` (entry ``bound`` = identity = NULL).

    Returns ``(array, pointers)``: ``pointers[v + bound]`` is a ``secp256k1_pubkey *`` or None for v = 0.
    Used by encryption to add ``x*P_A`` with one combine instead of a scalar multiplication.
    """
    b = parse_point(base, "base point")
    arr = ffi.new("secp256k1_pubkey[]", 2 * bound + 1)
    ptrs: list[object] = [None] * (2 * bound + 1)
    pair = ffi.new("secp256k1_pubkey *[2]")
    for v in range(1, bound + 1):
        pos = arr + (bound + v)
        if v == 1:
            ffi.memmove(pos, b, 64)
        else:
            pair[0] = arr + (bound + v - 1)
            pair[1] = b
            if not lib.secp256k1_ec_pubkey_combine(_CTX, pos, pair, 2):
                raise BSGSError("identity reached while tabulating small multiples")
        neg = arr + (bound - v)
        ffi.memmove(neg, pos, 64)
        lib.secp256k1_ec_pubkey_negate(_CTX, neg)
        ptrs[bound + v] = pos
        ptrs[bound - v] = neg
    return arr, ptrs


class BabyStepTable:
    """Sorted table of ``v*base`` for ``v = 1..m`` keyed by 64-bit x-prefixes (see module doc)."""

    def __init__(self, base: bytes, m: int) -> None:
        if m < 1:
            raise BSGSError(f"table size must be >= 1, got {m}")
        self.base = bytes(base)
        self.m = m
        b = parse_point(self.base, "base point")
        out = ffi.new("unsigned char[]", POINT_SIZE * m)
        ln = ffi.new("size_t *")
        # combine() zeroes its output first, so it must never alias an input: ping-pong two buffers
        bufs = ffi.new("secp256k1_pubkey[2]")
        ffi.memmove(bufs, b, 64)
        pair = ffi.new("secp256k1_pubkey *[2]")
        pair[1] = b
        for v in range(m):
            cur = bufs + (v & 1)
            ln[0] = POINT_SIZE
            lib.secp256k1_ec_pubkey_serialize(_CTX, out + POINT_SIZE * v, ln, cur, _EC_COMPRESSED)
            pair[0] = cur
            if v + 1 < m and not lib.secp256k1_ec_pubkey_combine(_CTX, bufs + ((v + 1) & 1), pair, 2):
                raise BSGSError("identity reached while building the baby-step table")
        comp = np.frombuffer(ffi.buffer(out), dtype=np.uint8).reshape(m, POINT_SIZE).copy()
        keys = _keys_of(comp)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        if m > 1 and np.any(self.keys[1:] == self.keys[:-1]):
            raise BSGSError("64-bit key collision in the baby-step table; use another table size")
        self.values = (order + 1).astype(np.int64)
        self.x = comp[order, 1:]
        self.parity = comp[order, 0] - 2

    def lookup(self, compressed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Solve ``Q = v*base`` for each row of an ``(k, 33)`` uint8 array with ``1 <= |v| <= m``.

        Returns ``(values int64, found bool)``; rows not found have value 0 and found False.
        """
        k = compressed.shape[0]
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        qk = _keys_of(compressed)
        pos = np.searchsorted(self.keys, qk)
        pos = np.minimum(pos, self.keys.size - 1)
        found = self.keys[pos] == qk
        if np.any(found):
            hit = np.flatnonzero(found)
            same_x = np.all(self.x[pos[hit]] == compressed[hit, 1:], axis=1)
            found[hit[~same_x]] = False
        sign = np.where(self.parity[pos] == compressed[:, 0] - 2, 1, -1).astype(np.int64)
        values = np.where(found, sign * self.values[pos], 0).astype(np.int64)
        return values, found


@functools.lru_cache(maxsize=8)
def baby_step_table(base: bytes, m: int) -> BabyStepTable:
    """Cached BabyStepTable for ``(base, m)`` (the one-time cost of decryption)."""
    return BabyStepTable(base, m)


def table_size_for(bound: int, max_table: int = DEFAULT_MAX_TABLE) -> int:
    """Baby-step count used for ``bound``: ``min(bound, max_table)`` (at least 1)."""
    return max(1, min(bound, max_table))


def parse_points(compressed: np.ndarray, what: str = "point") -> object:
    """Parse an ``(k, 33)`` uint8 array into a cffi ``secp256k1_pubkey[k]``; PointError names a bad row."""
    arr_np = np.ascontiguousarray(compressed, dtype=np.uint8)
    if arr_np.ndim != 2 or arr_np.shape[1] != POINT_SIZE:
        raise PointError(f"{what}s must be an (k, {POINT_SIZE}) uint8 array, got shape {arr_np.shape}")
    k = arr_np.shape[0]
    out = ffi.new("secp256k1_pubkey[]", max(k, 1))
    src = ffi.from_buffer(arr_np)
    parse = lib.secp256k1_ec_pubkey_parse
    for p in range(k):
        if not parse(_CTX, out + p, src + POINT_SIZE * p, POINT_SIZE):
            raise PointError(f"{what} {p} is not a point on secp256k1")
    return out


def solve(
    compressed: np.ndarray,
    identity: np.ndarray,
    base: bytes,
    bound: int,
    max_table: int = DEFAULT_MAX_TABLE,
    raw_points: object | None = None,
) -> np.ndarray:
    """Recover ``v_j`` with ``Q_j = v_j * base`` and ``|v_j| <= bound`` for all ``j``.

    ``compressed`` holds the ``(k, 33)`` uint8 encodings of the ``Q_j``, ``identity`` a bool mask of
    ``Q_j = O`` (value 0; those rows are ignored). ``raw_points`` optionally gives the same points as a
    cffi ``secp256k1_pubkey[k]`` (otherwise the few rows that need giant steps are parsed).
    Raises DecryptionRangeError listing the positions with no solution in ``[-bound, bound]``.
    """
    if bound < 0:
        raise ValueError("bound must be >= 0")
    k = compressed.shape[0]
    result = np.zeros(k, dtype=np.int64)
    pending = ~identity
    if bound == 0 or not np.any(pending):
        if np.any(pending):
            raise DecryptionRangeError(
                f"{int(pending.sum())} coordinates are non-zero but bound is 0", np.flatnonzero(pending)
            )
        return result
    m = table_size_for(bound, max_table)
    table = baby_step_table(bytes(base), m)
    idx = np.flatnonzero(pending)
    vals, found = table.lookup(compressed[idx])
    result[idx[found]] = vals[found]
    missing = idx[~found]
    if missing.size and (m < bound) and raw_points is None:
        sub = parse_points(compressed[missing], "query point")
        raw_points = ffi.new("secp256k1_pubkey[]", k)
        for row, p in enumerate(missing.tolist()):
            ffi.memmove(raw_points + p, sub + row, 64)
    step = 2 * m + 1
    t = 1
    base_raw = parse_point(bytes(base), "base point")
    tmp = ffi.new("secp256k1_pubkey *")
    pair = ffi.new("secp256k1_pubkey *[2]")
    ln = ffi.new("size_t *")
    while missing.size and (t * step - m) <= bound:
        for s in (1, -1):
            if not missing.size:
                break
            offset = s * t * step
            neg_offset = multiply(base_raw, scalar_bytes(-offset))
            pair[1] = neg_offset
            buf = ffi.new("unsigned char[]", POINT_SIZE * missing.size)
            zero = np.zeros(missing.size, dtype=bool)
            for row, p in enumerate(missing.tolist()):
                pair[0] = raw_points + p
                if not lib.secp256k1_ec_pubkey_combine(_CTX, tmp, pair, 2):
                    zero[row] = True
                    continue
                ln[0] = POINT_SIZE
                lib.secp256k1_ec_pubkey_serialize(_CTX, buf + POINT_SIZE * row, ln, tmp, _EC_COMPRESSED)
            comp = np.frombuffer(ffi.buffer(buf), dtype=np.uint8).reshape(missing.size, POINT_SIZE)
            vals, found = table.lookup(comp)
            found &= ~zero
            vals = np.where(zero, 0, vals)
            solved = found | zero
            result[missing[solved]] = vals[solved] + offset
            missing = missing[~solved]
        t += 1
    out_of_range = np.abs(result) > bound
    if missing.size or np.any(out_of_range):
        bad = np.union1d(missing, np.flatnonzero(out_of_range))
        raise DecryptionRangeError(
            f"{bad.size} of {k} coordinates have no discrete log in [-{bound}, {bound}] "
            f"(first at position {int(bad[0])}): wrong functional key, wrong ciphertext set, or overflow",
            bad,
        )
    return result
