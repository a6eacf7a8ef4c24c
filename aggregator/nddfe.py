"""NDD-FE secure aggregation over secp256k1 (DESIGN.md section 4, ``secagg=nddfe``).

Keys: task publisher ``(s_T, P_T)``, aggregator ``(s_A, P_A)``, miner ``i`` ``(s_i, P_i)``; secrets are
32-byte big-endian scalars in ``[1, n-1]``, publics 33-byte compressed points.

- ``DH_i = s_i*P_T = s_T*P_i`` (33-byte compressed encoding).
- mask ``r_ij = SHA-256(b"nddfe/r" || DH_i || taskId || epoch || supportHash || j) mod n`` with
  taskId as 32-byte big-endian uint256, epoch (the ``round_`` argument: the round's attempt) as
  8-byte big-endian uint64, supportHash = keccak256 of the whole sorted support as uint32 LE
  (``aggregator.support.support_hash``) and ``j`` the *global* coordinate index (an element of the
  support ``S_t``) as 8-byte big-endian uint64. Fresh per coordinate, epoch and support.
- encrypt ``U_ij = r_ij*P_T + x_ij*P_A`` for ``j`` in ``S_t`` (``x_ij*P_A`` from a cached table of
  small multiples; ``x_ij = 0`` adds nothing).
- functional key for the submitting set ``I``: ``sk_j = sum_{i in I} r_ij mod n`` (publisher, from
  ``s_T`` and the ``P_i``). Issue it once per (task, round, I).
- decrypt ``E_j = sum_{i in I} U_ij - sk_j*P_T = (sum_i x_ij)*P_A``; the integer is recovered by BSGS
  (``aggregator.bsgs``) with ``|sum| <= bound = |I| * (2^(b-1) - 1)``. ``E_j = O`` (identity) is 0.

Byte formats (all integers little-endian unless said otherwise):
- ciphertext: ``b"MMN1" | k:uint32 | parity bitmap (ceil(k/8) bytes, bit p = LSB-first bit p%8 of byte
  p//8 = y-parity of U_p) | k * 32-byte big-endian x coordinates``; ``32k + ceil(k/8) + 8`` bytes.
- functional key: ``b"MMK1" | k:uint32 | k * 32-byte big-endian scalars sk_j`` (0 allowed).

Pure computation, no I/O. ``r*P_T`` costs one libsecp256k1 multiplication (~35 us) per coordinate.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from coincurve._libsecp256k1 import ffi, lib

from aggregator.bsgs import (
    _CTX,
    _EC_COMPRESSED,
    CURVE_ORDER,
    DEFAULT_MAX_TABLE,
    POINT_SIZE,
    CryptoError,
    DecryptionRangeError,
    PointError,
    multiply,
    parse_point,
    parse_points,
    scalar_bytes,
    serialize_point,
    small_multiples,
    solve,
)
from aggregator.support import support_hash

__all__ = [
    "CURVE_ORDER",
    "DecryptionRangeError",
    "FunctionalKey",
    "KeyPair",
    "MalformedCiphertextError",
    "MalformedKeyError",
    "NddfeCiphertext",
    "NddfeError",
    "PointError",
    "decrypt_sum",
    "dh_point",
    "encrypt",
    "functional_key",
    "mask_scalars",
]

CIPHERTEXT_MAGIC = b"MMN1"
KEY_MAGIC = b"MMK1"
MASK_LABEL = b"nddfe/r"
_HEADER = struct.Struct("<4sI")
_N_BYTES = CURVE_ORDER.to_bytes(32, "big")
_ZERO32 = bytes(32)


class NddfeError(CryptoError):
    """Base class for NDD-FE input errors."""


class MalformedCiphertextError(NddfeError):
    """Ciphertext bytes with a wrong magic, length, support size or an off-curve point."""


class MalformedKeyError(NddfeError):
    """A secret/public key or functional key of the wrong type, length or value."""


def _check_secret(secret: bytes, what: str) -> bytes:
    if not isinstance(secret, bytes | bytearray):
        raise MalformedKeyError(f"{what} must be bytes, got {type(secret).__name__}")
    if len(secret) != 32:
        raise MalformedKeyError(f"{what} must be 32 bytes, got {len(secret)}")
    value = int.from_bytes(secret, "big")
    if not 0 < value < CURVE_ORDER:
        raise MalformedKeyError(f"{what} is not a scalar in [1, n-1]")
    return bytes(secret)


def _parse_public(public: bytes, what: str) -> object:
    try:
        return parse_point(public, what)
    except PointError as exc:
        raise MalformedKeyError(str(exc)) from exc


def _check_uint(name: str, value: int, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise NddfeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < (1 << bits):
        raise NddfeError(f"{name}={value} does not fit uint{bits}")
    return value


def _check_indices(indices: np.ndarray) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise NddfeError("indices must be a 1-D integer array")
    arr = arr.astype(np.int64)
    if arr.size and (arr[0] < 0 or np.any(np.diff(arr) <= 0)):
        raise NddfeError("indices must be non-negative and strictly increasing")
    return arr


@dataclass(frozen=True)
class KeyPair:
    """A secp256k1 key pair: 32-byte secret scalar and 33-byte compressed public point."""

    secret: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        """Fresh key pair from the OS CSPRNG."""
        while True:
            s = secrets.token_bytes(32)
            if 0 < int.from_bytes(s, "big") < CURVE_ORDER:
                return cls.from_secret(s)

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        """Derive the public point of ``secret``; raises MalformedKeyError on a bad scalar."""
        s = _check_secret(secret, "secret key")
        pub = ffi.new("secp256k1_pubkey *")
        if not lib.secp256k1_ec_pubkey_create(_CTX, pub, s):
            raise MalformedKeyError("secret key rejected by libsecp256k1")
        return cls(secret=s, public=serialize_point(pub))


def dh_point(secret: bytes, public: bytes) -> bytes:
    """``secret * public`` as 33 compressed bytes (``DH_i``: ``s_i*P_T`` or ``s_T*P_i``)."""
    s = _check_secret(secret, "secret key")
    return serialize_point(multiply(_parse_public(public, "public key"), s))


def _mask_prefix(dh: bytes, task_id: int, round_: int, indices: np.ndarray) -> hashlib._Hash:  # type: ignore[name-defined]
    h = hashlib.sha256(MASK_LABEL)
    h.update(dh)
    h.update(_check_uint("task_id", task_id, 256).to_bytes(32, "big"))
    h.update(_check_uint("round", round_, 64).to_bytes(8, "big"))
    h.update(support_hash(indices))
    return h


def _mask_bytes(prefix: hashlib._Hash, j: int) -> bytes:  # type: ignore[name-defined]
    h = prefix.copy()
    h.update(j.to_bytes(8, "big"))
    r = h.digest()
    if r >= _N_BYTES:
        r = (int.from_bytes(r, "big") - CURVE_ORDER).to_bytes(32, "big")
    if r == _ZERO32:  # probability 2^-256; a zero mask would reveal x
        raise NddfeError(f"mask for coordinate {j} is 0 mod n")
    return r


def mask_scalars(dh: bytes, task_id: int, round_: int, indices: np.ndarray) -> list[int]:
    """The masks ``r_ij`` (ints in [1, n-1]) of one miner for every ``j`` in ``indices`` (the whole
    sorted support: its hash is part of every mask)."""
    idx = _check_indices(indices)
    prefix = _mask_prefix(dh, task_id, round_, idx)
    return [int.from_bytes(_mask_bytes(prefix, j), "big") for j in idx.tolist()]


@dataclass(frozen=True)
class NddfeCiphertext:
    """One miner's ciphertext: ``k`` compressed points ``U_j`` as a ``(k, 33)`` uint8 array."""

    points: np.ndarray

    @property
    def k(self) -> int:
        return int(self.points.shape[0])

    @staticmethod
    def size_for(k: int) -> int:
        """Exact byte size of a ciphertext over ``k`` coordinates."""
        return _HEADER.size + (k + 7) // 8 + 32 * k

    def to_bytes(self) -> bytes:
        """Compact encoding: header, parity bitmap, 32-byte x coordinates (see module doc)."""
        parity = (self.points[:, 0] - 2).astype(np.uint8)
        bitmap = np.packbits(parity, bitorder="little").tobytes()
        return _HEADER.pack(CIPHERTEXT_MAGIC, self.k) + bitmap + self.points[:, 1:].tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, expected_k: int | None = None) -> NddfeCiphertext:
        """Parse and validate structure (magic, length, ``k == expected_k``).

        Curve membership of every point is checked when the ciphertext is parsed for decryption
        (``parse``), which raises MalformedCiphertextError naming the bad coordinate."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedCiphertextError(f"ciphertext must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise MalformedCiphertextError(f"ciphertext of {len(data)} bytes is shorter than its header")
        magic, k = _HEADER.unpack_from(data)
        if magic != CIPHERTEXT_MAGIC:
            raise MalformedCiphertextError(f"not an NDD-FE ciphertext (magic {magic!r})")
        if expected_k is not None and k != expected_k:
            raise MalformedCiphertextError(f"ciphertext has k={k} coordinates, expected {expected_k}")
        if len(data) != cls.size_for(k):
            raise MalformedCiphertextError(
                f"ciphertext is {len(data)} bytes, expected {cls.size_for(k)} for k={k}"
            )
        nb = (k + 7) // 8
        bits = np.unpackbits(
            np.frombuffer(data, dtype=np.uint8, count=nb, offset=_HEADER.size), bitorder="little"
        )
        if k % 8 and np.any(bits[k:]):
            raise MalformedCiphertextError("non-zero padding bits in the parity bitmap")
        points = np.empty((k, POINT_SIZE), dtype=np.uint8)
        points[:, 0] = bits[:k] + 2
        points[:, 1:] = np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size + nb).reshape(k, 32)
        return cls(points=points)

    def parse(self, miner: int | None = None) -> object:
        """All points as a cffi ``secp256k1_pubkey[k]``; raises MalformedCiphertextError if one is off-curve."""
        try:
            return parse_points(self.points, "coordinate")
        except PointError as exc:
            who = "" if miner is None else f" (ciphertext #{miner})"
            raise MalformedCiphertextError(f"{exc}{who}") from exc


def encrypt(
    x: np.ndarray,
    indices: np.ndarray,
    task_id: int,
    round_: int,
    miner_secret: bytes,
    publisher_public: bytes,
    aggregator_public: bytes,
    max_abs: int = (1 << 14) - 1,
) -> NddfeCiphertext:
    """Encrypt the quantized values ``x`` (``x[p]`` belongs to coordinate ``indices[p]``).

    ``|x| <= max_abs`` (``2^(b-1)-1``, default b=15) is enforced. Returns ``U_j`` for each j.
    Raises NddfeError / MalformedKeyError on bad input.
    """
    idx = _check_indices(indices)
    xs = np.asarray(x)
    if xs.ndim != 1 or xs.shape[0] != idx.size:
        raise NddfeError(f"x has shape {xs.shape}, expected ({idx.size},) to match indices")
    if xs.size and xs.dtype.kind not in "iu":
        raise NddfeError(f"x must be integers (quantized), got dtype {xs.dtype}")
    xs = xs.astype(np.int64)
    if xs.size and int(np.max(np.abs(xs))) > max_abs:
        raise NddfeError(f"|x| exceeds max_abs={max_abs}")
    pt = _parse_public(publisher_public, "publisher public key")
    _parse_public(aggregator_public, "aggregator public key")
    dh = dh_point(miner_secret, publisher_public)
    prefix = _mask_prefix(dh, task_id, round_, idx)
    _, xptrs = small_multiples(bytes(aggregator_public), max_abs)

    k = idx.size
    out = ffi.new("unsigned char[]", POINT_SIZE * max(k, 1))
    ln = ffi.new("size_t *")
    rp = ffi.new("secp256k1_pubkey *")
    u = ffi.new("secp256k1_pubkey *")
    pair = ffi.new("secp256k1_pubkey *[2]")
    pair[0] = rp
    tweak_mul = lib.secp256k1_ec_pubkey_tweak_mul
    combine = lib.secp256k1_ec_pubkey_combine
    serialize = lib.secp256k1_ec_pubkey_serialize
    memmove = ffi.memmove
    for p, (j, xv) in enumerate(zip(idx.tolist(), xs.tolist(), strict=True)):
        r = _mask_bytes(prefix, j)
        memmove(rp, pt, 64)
        tweak_mul(_CTX, rp, r)
        ln[0] = POINT_SIZE
        if xv == 0:
            serialize(_CTX, out + POINT_SIZE * p, ln, rp, _EC_COMPRESSED)
            continue
        pair[1] = xptrs[xv + max_abs]
        if not combine(_CTX, u, pair, 2):  # r*P_T = -x*P_A: would need log_PA(P_T); never in practice
            raise NddfeError(f"ciphertext for coordinate {j} is the identity")
        serialize(_CTX, out + POINT_SIZE * p, ln, u, _EC_COMPRESSED)
    pts = np.frombuffer(ffi.buffer(out), dtype=np.uint8)[: POINT_SIZE * k].reshape(k, POINT_SIZE).copy()
    return NddfeCiphertext(points=pts)


@dataclass(frozen=True)
class FunctionalKey:
    """Per-coordinate decryption scalars ``sk_j = sum_{i in I} r_ij mod n`` (ints in [0, n-1])."""

    scalars: tuple[int, ...]

    @property
    def k(self) -> int:
        return len(self.scalars)

    def to_bytes(self) -> bytes:
        return _HEADER.pack(KEY_MAGIC, self.k) + b"".join(s.to_bytes(32, "big") for s in self.scalars)

    @classmethod
    def from_bytes(cls, data: bytes, expected_k: int | None = None) -> FunctionalKey:
        """Parse and validate (magic, length, every scalar < n)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedKeyError(f"functional key must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise MalformedKeyError("functional key shorter than its header")
        magic, k = _HEADER.unpack_from(data)
        if magic != KEY_MAGIC:
            raise MalformedKeyError(f"not an NDD-FE functional key (magic {magic!r})")
        if expected_k is not None and k != expected_k:
            raise MalformedKeyError(f"functional key has k={k}, expected {expected_k}")
        if len(data) != _HEADER.size + 32 * k:
            raise MalformedKeyError(f"functional key is {len(data)} bytes, expected {_HEADER.size + 32 * k}")
        body = data[_HEADER.size :]
        scalars = tuple(int.from_bytes(body[32 * p : 32 * p + 32], "big") for p in range(k))
        if any(s >= CURVE_ORDER for s in scalars):
            raise MalformedKeyError("functional key scalar not reduced mod n")
        return cls(scalars=scalars)


def functional_key(
    publisher_secret: bytes,
    miner_publics: Sequence[bytes],
    task_id: int,
    round_: int,
    indices: np.ndarray,
) -> FunctionalKey:
    """The publisher's key for the submitting set ``I`` (given by the miners' public keys).

    Raises NddfeError on an empty or duplicated set (a duplicate would double-count a mask)."""
    pubs = [bytes(p) if isinstance(p, bytes | bytearray) else p for p in miner_publics]
    if not pubs:
        raise NddfeError("the submitting set is empty")
    if len(set(pubs)) != len(pubs):
        raise NddfeError("duplicate miner public key in the submitting set")
    idx_arr = _check_indices(indices)
    idx = idx_arr.tolist()
    total = [0] * len(idx)
    for pub in pubs:
        prefix = _mask_prefix(dh_point(publisher_secret, pub), task_id, round_, idx_arr)
        for p, j in enumerate(idx):
            total[p] += int.from_bytes(_mask_bytes(prefix, j), "big")
    return FunctionalKey(scalars=tuple(t % CURVE_ORDER for t in total))


def _combine_block(
    points: Sequence[np.ndarray], scalars: Sequence[int], publisher_public: bytes, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``E_j = sum_i U_ij - sk_j*P_T`` for one block of coordinates.

    ``points[i]`` is miner i's ``(c, 33)`` uint8 block, ``scalars`` the ``c`` key scalars, ``offset`` the
    block's first position (for error messages). Returns ((c, 33) encodings, identity mask).
    """
    n = len(points)
    c = len(scalars)
    pt = _parse_public(publisher_public, "publisher public key")
    parsed = []
    parse = lib.secp256k1_ec_pubkey_parse
    for i, block in enumerate(points):
        arr = ffi.new("secp256k1_pubkey[]", max(c, 1))
        src = ffi.from_buffer(np.ascontiguousarray(block, dtype=np.uint8))
        for p in range(c):
            if not parse(_CTX, arr + p, src + POINT_SIZE * p, POINT_SIZE):
                raise MalformedCiphertextError(
                    f"coordinate {offset + p} of ciphertext #{i} is not a point on secp256k1"
                )
        parsed.append(arr)
    ptrs = ffi.new("secp256k1_pubkey *[]", n + 1)
    e = ffi.new("secp256k1_pubkey *")
    out = ffi.new("unsigned char[]", POINT_SIZE * max(c, 1))
    ln = ffi.new("size_t *")
    msk = ffi.new("secp256k1_pubkey *")
    ptrs[n] = msk
    identity = np.zeros(c, dtype=bool)
    tweak_mul = lib.secp256k1_ec_pubkey_tweak_mul
    combine = lib.secp256k1_ec_pubkey_combine
    serialize = lib.secp256k1_ec_pubkey_serialize
    for p, sk in enumerate(scalars):
        for i in range(n):
            ptrs[i] = parsed[i] + p
        count = n
        if sk:
            ffi.memmove(msk, pt, 64)
            tweak_mul(_CTX, msk, (CURVE_ORDER - sk).to_bytes(32, "big"))
            count = n + 1
        if not combine(_CTX, e, ptrs, count):
            identity[p] = True
            continue
        ln[0] = POINT_SIZE
        serialize(_CTX, out + POINT_SIZE * p, ln, e, _EC_COMPRESSED)
    comp = np.frombuffer(ffi.buffer(out), dtype=np.uint8)[: POINT_SIZE * c].reshape(c, POINT_SIZE).copy()
    return comp, identity


def _combine_job(
    args: tuple[list[bytes], list[int], bytes, int],
) -> tuple[bytes, bytes]:
    """Process-pool entry point: bytes in, bytes out (no cffi objects cross processes)."""
    blocks, scalars, publisher_public, offset = args
    points = [np.frombuffer(b, dtype=np.uint8).reshape(-1, POINT_SIZE) for b in blocks]
    comp, identity = _combine_block(points, scalars, publisher_public, offset)
    return comp.tobytes(), identity.tobytes()


def combine_ciphertexts(
    ciphertexts: Sequence[NddfeCiphertext], key: FunctionalKey, publisher_public: bytes, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``E_j = sum_i U_ij - sk_j*P_T`` for every j: ((k, 33) encodings, identity mask).

    ``workers > 1`` splits the coordinates over a spawned process pool (pays only for large
    ``n*k``: spawning costs ~0.3 s; see docs/crypto.md)."""
    if not ciphertexts:
        raise NddfeError("no ciphertexts to decrypt")
    k = key.k
    for i, c in enumerate(ciphertexts):
        if c.k != k:
            raise MalformedCiphertextError(f"ciphertext #{i} has k={c.k}, the functional key has k={k}")
    _parse_public(publisher_public, "publisher public key")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise NddfeError(f"workers must be a positive int, got {workers!r}")
    if workers == 1 or k < 2 * workers:
        return _combine_block([c.points for c in ciphertexts], key.scalars, bytes(publisher_public))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    edges = np.linspace(0, k, workers + 1).astype(int).tolist()
    jobs = [
        ([c.points[a:b].tobytes() for c in ciphertexts], list(key.scalars[a:b]), bytes(publisher_public), a)
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_combine_job, jobs))
    comp = np.concatenate([np.frombuffer(r[0], dtype=np.uint8).reshape(-1, POINT_SIZE) for r in results])
    identity = np.concatenate([np.frombuffer(r[1], dtype=bool) for r in results])
    return comp, identity


def decrypt_sum(
    ciphertexts: Sequence[NddfeCiphertext],
    key: FunctionalKey,
    publisher_public: bytes,
    aggregator_public: bytes,
    bound: int,
    max_table: int = DEFAULT_MAX_TABLE,
    workers: int = 1,
) -> np.ndarray:
    """Recover ``sum_{i in I} x_ij`` (int64, length k) from the ciphertexts of exactly the set ``I``.

    ``bound`` is the largest possible ``|sum|`` (``|I| * (2^(b-1)-1)``). Raises DecryptionRangeError
    when some coordinate has no solution in ``[-bound, bound]`` (wrong key or set), never returns 0
    for it; MalformedCiphertextError / MalformedKeyError on malformed input. ``workers > 1`` uses a
    spawned process pool for the point arithmetic (worth it for n*k above ~200,000).
    """
    _parse_public(aggregator_public, "aggregator public key")
    comp, identity = combine_ciphertexts(ciphertexts, key, publisher_public, workers)
    return solve(comp, identity, bytes(aggregator_public), int(bound), max_table)


def audit_points(key: FunctionalKey, publisher_public: bytes) -> list[bytes | None]:
    """Optional audit: ``M_j = sk_j*P_T`` (None where ``sk_j = 0``) so voters can spot-check an aggregate."""
    pt = _parse_public(publisher_public, "publisher public key")
    return [serialize_point(multiply(pt, scalar_bytes(s))) if s else None for s in key.scalars]
