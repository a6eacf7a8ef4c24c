"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1). Pure, no I/O.

A secret ``s`` (32 bytes, read big-endian, so ``s < 2^256 < p``) is the constant term of a random
polynomial ``f`` of degree ``threshold - 1`` with coefficients from ``secrets.randbelow(p)``; share
``x`` (an integer ``1 <= x < 2^32``, here a miner's 1-based roster position) is ``f(x) mod p``.
Any ``threshold`` shares give ``f(0)`` by Lagrange interpolation; fewer are independent of ``s``
(each set of ``threshold - 1`` shares is uniform over the field, whatever the secret).

Wire format of one share: ``x:uint32 BE | f(x):66 bytes BE`` (70 bytes).

Why not Flower's ``flwr.common.secure_aggregation.crypto.shamir``: it is sound (PyCryptodome's
GF(2^128) Shamir on 16-byte chunks of a padded secret) but starts a thread pool per call and pads
32-byte secrets to 3 chunks; a single field element of 521 bits is simpler to check and to test.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence

PRIME = (1 << 521) - 1
ELEMENT_BYTES = 66
SHARE_BYTES = 4 + ELEMENT_BYTES
SECRET_BYTES = 32
_X = struct.Struct(">I")


class ShamirError(ValueError):
    """Bad sharing parameters, malformed shares, too few or duplicate shares."""


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[bytes]:
    """Shares of ``secret`` (32 bytes) for the evaluation points ``xs`` (distinct, in [1, 2^32)).

    Needs ``2 <= threshold <= len(xs)``; returns one wire share per ``x`` in the order of ``xs``.
    """
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
        raise ShamirError(f"secret must be {SECRET_BYTES} bytes")
    points = [int(x) for x in xs]
    if len(set(points)) != len(points) or any(not 1 <= x < 1 << 32 for x in points):
        raise ShamirError("evaluation points must be distinct integers in [1, 2^32)")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 2 <= threshold <= len(points):
        raise ShamirError(f"threshold must be an int in [2, {len(points)}], got {threshold!r}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in points:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append(_X.pack(x) + y.to_bytes(ELEMENT_BYTES, "big"))
    return shares


def parse_share(share: bytes) -> tuple[int, int]:
    """``(x, y)`` of a wire share; raises ShamirError when malformed."""
    if not isinstance(share, bytes | bytearray) or len(share) != SHARE_BYTES:
        raise ShamirError(f"a share is {SHARE_BYTES} bytes")
    (x,) = _X.unpack_from(share)
    y = int.from_bytes(share[4:], "big")
    if x == 0 or y >= PRIME:
        raise ShamirError("share point out of range")
    return x, y


def combine(shares: Sequence[bytes], threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares (the first ``threshold`` by x are used).

    Raises ShamirError on fewer than ``threshold`` shares, duplicate points, or an interpolated value
    that is not a 32-byte secret (shares of different secrets or tampered shares, with high probability).
    """
    points = sorted(parse_share(s) for s in shares)
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise ShamirError("duplicate share points")
    if len(points) < threshold:
        raise ShamirError(f"{len(points)} shares < threshold {threshold}")
    used = points[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(used):
        num, den = 1, 1
        for j, (xj, _) in enumerate(used):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise ShamirError("shares do not interpolate to a 32-byte secret (inconsistent or tampered shares)")
    return secret.to_bytes(SECRET_BYTES, "big")
