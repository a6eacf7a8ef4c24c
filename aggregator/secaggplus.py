"""Threshold secure aggregation on the shared support: SecAgg+ (Bell et al. 2020) with AES-CTR masks
over the ``k`` support coordinates only (``secagg=secaggplus``). Pure: no I/O, no clocks.

Roles and stages of one attempt (a :class:`RoundTag`: chain domain, task, round, attempt, support hash):

1. **advertise** (miner): two fresh X25519 key pairs (``enc``: encrypts shares between neighbours,
   ``mask``: pairwise mask agreement) signed with the miner's Ethereum key (EIP-191 over the tag and
   both keys) -> :class:`AdvertiseKeys`. The server collects them into the *roster* (sorted by address;
   roster position ``i`` is the miner's index, its Shamir point is ``i + 1``).
2. **share keys** (miner, given the roster): checks every signature and its own entry, derives the
   neighbour graph (:func:`neighbours`: a Harary graph of even degree ``k = O(log n)`` on a random
   order of the roster, the order drawn from a hash of the tag and the roster addresses, so the server
   cannot pick it after the fact), draws its self-mask seed ``b_u``, Shamir-shares ``b_u`` and its
   ``mask`` secret among its ``k`` neighbours with threshold ``t > k/2``, and encrypts each
   neighbour's pair of shares (AES-256-GCM, key = HKDF(X25519(enc_u, enc_v)), AAD = tag|u|v) ->
   :class:`EncryptedShare` list. Those who shared form ``U2``.
3. **masked input** (miner, given ``U2`` and the shares addressed to it): decrypts and keeps them,
   then sends ``y_u = x_u + G(b_u) + sum_{v in N(u) & U2} +-G(s_uv) mod 2^w`` on the support, with
   ``s_uv`` = HKDF(X25519(mask_u, mask_v), tag, pair), ``+`` when ``u < v``. At most once per tag.
4. **unmask** (miner, given the survivors ``S``, i.e. whose masked inputs the server holds): refuses
   unless ``u in S``, ``S`` is inside ``U2`` and ``|S| >= min_survivors``; then, for each neighbour
   ``v``, reveals EITHER its share of ``b_v`` (``v in S``) OR its share of ``mask_v`` (``v in U2 \\ S``,
   dropped), never both, and only once per tag. The server (:func:`unmask_sum`) reconstructs every
   ``b_v`` of a survivor and every ``mask_v`` of a dropped miner (checked against its advertised
   public key), removes the masks and range-checks the sum.

The PRG ``G``: AES-256 under ``SHA-256(label | purpose | seed | tag)``, the block at counter = the
**global coordinate index** (16-byte big-endian), its first ``w/8`` bytes little-endian: the keystream
of AES-CTR read at the support's coordinates, so a mask is tied to (seed, tag, coordinate) and costs
O(k), not O(d). ``w`` = 32 when ``bits <= 16``, else 64 (as the masked backend).

What the server learns (adversary = the aggregator, possibly lying about who dropped): with ``t > k/2``
and honest neighbours, the answers for one miner ``v`` split into two disjoint sets (b-shares,
mask-shares) of total size at most ``k``, so at most one of them reaches ``t``: it can unmask ``y_v``
as a survivor or remove ``v``'s pairwise masks as a dropped miner, not both. Each honest miner answers
one unmask request per tag and only when at least ``min_survivors`` survivors are claimed. Colluding
miners hold shares too: with ``c`` of them among a miner's neighbours the bound becomes ``t > (k+c)/2``.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import coincurve
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_utils import keccak, to_checksum_address

from aggregator import masked, shamir
from aggregator.bsgs import CryptoError, DecryptionRangeError
from aggregator.protocol import RoundPlan
from aggregator.support import support_hash as _support_hash

LABEL = b"modelmine/secaggplus/v1"
KEY_BYTES = 32
SIGNATURE_BYTES = 65
_PAIR_PLAIN = 2 * shamir.SHARE_BYTES
ENCRYPTED_SHARE_BYTES = 12 + _PAIR_PLAIN + 16  # nonce | AES-GCM(self share | mask share) | tag
_U32 = struct.Struct(">I")


class SecAggPlusError(CryptoError):
    """Malformed or inconsistent protocol input (bad roster, signature, share, state)."""


class UnmaskRefused(SecAggPlusError):
    """A miner refuses a request that would let the server learn more than a sum over enough miners."""


# -- parameters and context -------------------------------------------------------------------------


@dataclass(frozen=True)
class SecAggPlusConfig:
    """Settings of the backend (conf/secagg/secaggplus.yaml). A miner recomputes :class:`Params` from
    these and the roster size, and never goes below the safety floors (``t > k/2``, ``t >= 2``,
    ``min_survivors >= 2``) whatever a plan says."""

    bits: int = 15
    degree_factor: float = 8.0  # k = min(n - 1, even ceil(degree_factor * log2 n))
    threshold_fraction: float = 0.5  # t = max(floor(k/2) + 1, ceil(threshold_fraction * k))
    min_survivors_fraction: float = 0.5  # t_min = max(2, min_survivors, ceil(fraction * n))
    min_survivors: int = 2  # absolute floor of t_min (the task's threshold t on chain)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 31:
            raise SecAggPlusError(f"bits must be an int in [2, 31], got {self.bits!r}")
        if not math.isfinite(self.degree_factor) or self.degree_factor <= 0:
            raise SecAggPlusError(f"degree_factor must be > 0, got {self.degree_factor!r}")
        for name in ("threshold_fraction", "min_survivors_fraction"):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise SecAggPlusError(f"{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class Params:
    """Sizes of one attempt: roster size ``n``, graph degree ``k``, Shamir threshold ``t``, global
    minimum of survivors, and the mask word size ``w`` in bits."""

    n: int
    degree: int
    threshold: int
    min_survivors: int
    word_bits: int
    bits: int

    @property
    def max_abs(self) -> int:
        return (1 << (self.bits - 1)) - 1


def params_for(n: int, config: SecAggPlusConfig) -> Params:
    """The parameters for a roster of ``n`` miners (``n >= 3``: two miners would learn each other's input)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise SecAggPlusError(f"secaggplus needs a roster of at least 3 miners, got {n!r}")
    degree = math.ceil(config.degree_factor * math.log2(n))
    degree += degree % 2
    degree = min(n - 1, max(2, degree))
    threshold = max(2, degree // 2 + 1, math.ceil(config.threshold_fraction * degree))
    threshold = min(threshold, degree)
    min_survivors = max(2, int(config.min_survivors), math.ceil(config.min_survivors_fraction * n))
    word_bits = 32 if (1 << (config.bits - 1)) - 1 < (1 << 15) else 64
    return Params(n, degree, threshold, min_survivors, word_bits, config.bits)


@dataclass(frozen=True)
class RoundTag:
    """What every key, share and mask of an attempt is bound to. ``domain`` is a 32-byte hash of the
    chain id and contract; ``attempt`` the chain's attempt (epoch) counter, never reused."""

    domain: bytes
    task_id: int
    round: int
    attempt: int
    support_hash: bytes

    def __post_init__(self) -> None:
        if len(self.domain) != 32 or len(self.support_hash) != 32:
            raise SecAggPlusError("domain and support hash must be 32 bytes")
        for name, bits in (("task_id", 256), ("round", 64), ("attempt", 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
                raise SecAggPlusError(f"{name} must be a uint{bits}, got {value!r}")

    def encode(self) -> bytes:
        return (
            self.domain
            + self.task_id.to_bytes(32, "big")
            + self.round.to_bytes(8, "big")
            + self.attempt.to_bytes(8, "big")
            + self.support_hash
        )


def domain_hash(chain_id: int, verifying_contract: str) -> bytes:
    """32-byte ``RoundTag.domain`` of a deployment."""
    return keccak(LABEL + b"/domain" + chain_id.to_bytes(32, "big") + bytes.fromhex(verifying_contract[2:]))


def tag_of(plan: RoundPlan) -> RoundTag:
    """The tag of a round plan (miner and server compute it alike): attempt = the plan's epoch."""
    if plan.support is None:
        raise SecAggPlusError("secaggplus needs the shared support (dgc.support=shared)")
    return RoundTag(
        domain=domain_hash(plan.domain.chain_id, plan.domain.verifying_contract),
        task_id=plan.task_id,
        round=plan.round,
        attempt=plan.crypto_round,
        support_hash=plan.support_hash,
    )


# -- neighbour graph ----------------------------------------------------------------------------------


def graph_seed(tag: RoundTag, addresses: Sequence[str]) -> bytes:
    """Public seed of the graph: fixed by the tag and the roster, known to every miner."""
    return hashlib.sha256(LABEL + b"/graph" + tag.encode() + "".join(addresses).encode()).digest()


def neighbours(n: int, degree: int, seed: bytes) -> tuple[tuple[int, ...], ...]:
    """Harary graph ``H(degree, n)`` on a seed-drawn order of ``0..n-1``: each node is linked to the
    ``degree/2`` nodes before and after it on the ring (complete when ``degree >= n - 1``).
    Returns each node's sorted neighbour indices; the relation is symmetric."""
    if degree >= n - 1:
        return tuple(tuple(j for j in range(n) if j != i) for i in range(n))
    if degree % 2:
        raise SecAggPlusError(f"a Harary graph here needs an even degree, got {degree}")
    order = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big"))).permutation(n)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    half = degree // 2
    out = []
    for i in range(n):
        p = int(position[i])
        out.append(tuple(sorted(int(order[(p + s) % n]) for s in range(-half, half + 1) if s)))
    return tuple(out)


# -- keys and signatures ---------------------------------------------------------------------------------


def _x25519_public(secret: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def _x25519(secret: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # all-zero shared secret (low-order point) or bad length
        raise SecAggPlusError(f"key agreement failed: {exc}") from exc


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=LABEL, info=info).derive(material)


@dataclass(frozen=True)
class EphemeralKeys:
    """A miner's fresh key pairs for one attempt (raw X25519 secrets, never sent)."""

    enc_secret: bytes = field(repr=False)
    mask_secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> EphemeralKeys:
        return cls(X25519PrivateKey.generate().private_bytes_raw(), X25519PrivateKey.generate().private_bytes_raw())

    @property
    def enc_public(self) -> bytes:
        return _x25519_public(self.enc_secret)

    @property
    def mask_public(self) -> bytes:
        return _x25519_public(self.mask_secret)


def _eip191(payload: bytes) -> bytes:
    return keccak(b"\x19Ethereum Signed Message:\n32" + keccak(payload))


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1 message: a miner's two public keys for this tag, signed with its Ethereum key."""

    address: str
    enc_public: bytes
    mask_public: bytes
    signature: bytes

    def digest(self, tag: RoundTag) -> bytes:
        return _eip191(LABEL + b"/keys" + tag.encode() + bytes.fromhex(self.address[2:]) + self.enc_public + self.mask_public)

    def verify(self, tag: RoundTag) -> None:
        """Raise SecAggPlusError unless the signature recovers ``address`` for this tag."""
        if len(self.enc_public) != KEY_BYTES or len(self.mask_public) != KEY_BYTES:
            raise SecAggPlusError(f"{self.address}: public keys must be {KEY_BYTES} bytes")
        if len(self.signature) != SIGNATURE_BYTES:
            raise SecAggPlusError(f"{self.address}: signature must be {SIGNATURE_BYTES} bytes")
        try:
            public = coincurve.PublicKey.from_signature_and_message(self.signature, self.digest(tag), hasher=None)
        except Exception as exc:  # noqa: BLE001 - coincurve raises plain Exception/ValueError on bad input
            raise SecAggPlusError(f"{self.address}: unrecoverable key signature: {exc}") from exc
        signer = to_checksum_address(keccak(public.format(compressed=False)[1:])[-20:])
        if signer != to_checksum_address(self.address):
            raise SecAggPlusError(f"keys of {self.address} are signed by {signer}")

    def to_bytes(self) -> bytes:
        return bytes.fromhex(self.address[2:]) + self.enc_public + self.mask_public + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> AdvertiseKeys:
        if not isinstance(data, bytes | bytearray) or len(data) != 20 + 2 * KEY_BYTES + SIGNATURE_BYTES:
            raise SecAggPlusError("advertised keys have the wrong size")
        data = bytes(data)
        return cls(to_checksum_address(data[:20]), data[20:52], data[52:84], data[84:])


def sign_keys(tag: RoundTag, eth_key: bytes, keys: EphemeralKeys) -> AdvertiseKeys:
    """Stage 1: the signed advertisement of ``keys`` for ``tag``."""
    private = coincurve.PrivateKey(eth_key)
    address = to_checksum_address(keccak(private.public_key.format(compressed=False)[1:])[-20:])
    unsigned = AdvertiseKeys(address, keys.enc_public, keys.mask_public, b"")
    signature = private.sign_recoverable(unsigned.digest(tag), hasher=None)
    return AdvertiseKeys(address, keys.enc_public, keys.mask_public, signature)


def build_roster(tag: RoundTag, adverts: Iterable[AdvertiseKeys]) -> tuple[tuple[AdvertiseKeys, ...], list[str]]:
    """Server: valid adverts sorted by address (one per address), and the reasons for the others."""
    good: dict[str, AdvertiseKeys] = {}
    rejected: list[str] = []
    for advert in adverts:
        try:
            advert.verify(tag)
        except SecAggPlusError as exc:
            rejected.append(str(exc))
            continue
        address = to_checksum_address(advert.address)
        if address in good:
            rejected.append(f"{address} advertised twice")
            continue
        good[address] = advert
    return tuple(good[a] for a in sorted(good)), rejected


def roster_to_bytes(roster: Sequence[AdvertiseKeys]) -> bytes:
    return b"".join(a.to_bytes() for a in roster)


def roster_from_bytes(data: bytes) -> tuple[AdvertiseKeys, ...]:
    size = 20 + 2 * KEY_BYTES + SIGNATURE_BYTES
    if not isinstance(data, bytes | bytearray) or len(data) % size:
        raise SecAggPlusError("roster bytes have the wrong size")
    return tuple(AdvertiseKeys.from_bytes(bytes(data[i : i + size])) for i in range(0, len(data), size))


# -- masks ----------------------------------------------------------------------------------------------


def expand(seed: bytes, tag: RoundTag, purpose: bytes, indices: np.ndarray, word_bits: int) -> np.ndarray:
    """The mask words at the global coordinates ``indices``: AES-256-CTR keystream blocks at counter =
    coordinate index under ``SHA-256(label | purpose | seed | tag)``, first ``w/8`` bytes of each."""
    if word_bits not in (32, 64):
        raise SecAggPlusError(f"word_bits must be 32 or 64, got {word_bits!r}")
    idx = np.asarray(indices, dtype=np.int64)
    key = hashlib.sha256(LABEL + b"/prg/" + purpose + b"|" + seed + tag.encode()).digest()
    blocks = np.zeros((idx.size, 16), dtype=np.uint8)
    blocks[:, 8:] = idx.astype(">u8").view(np.uint8).reshape(idx.size, 8)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # ECB on counter blocks = CTR keystream
    stream = np.frombuffer(encryptor.update(blocks.tobytes()) + encryptor.finalize(), dtype=np.uint8)
    width = word_bits // 8
    words = np.ascontiguousarray(stream.reshape(idx.size, 16)[:, :width])
    return words.view("<u4" if word_bits == 32 else "<u8").reshape(idx.size).astype(np.uint32 if word_bits == 32 else np.uint64)


def pair_seed(my_mask_secret: bytes, their_mask_public: bytes, tag: RoundTag, i: int, j: int) -> bytes:
    """Seed of the pairwise mask of roster positions ``i`` and ``j`` (symmetric in the two miners)."""
    lo, hi = sorted((i, j))
    return _hkdf(_x25519(my_mask_secret, their_mask_public), LABEL + b"/pair" + tag.encode() + _U32.pack(lo) + _U32.pack(hi))


def _share_key(my_enc_secret: bytes, their_enc_public: bytes, tag: RoundTag) -> bytes:
    return _hkdf(_x25519(my_enc_secret, their_enc_public), LABEL + b"/share-key" + tag.encode())


def _unsigned(word_bits: int) -> type:
    return np.uint32 if word_bits == 32 else np.uint64


# -- messages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedShare:
    """Stage 2 message: miner ``src``'s shares (of ``b_src`` and of its mask secret) for ``dst``,
    relayed by the server, readable only by ``dst``."""

    src: int
    dst: int
    ciphertext: bytes


def shares_to_bytes(shares: Sequence[EncryptedShare]) -> bytes:
    out = bytearray()
    for s in shares:
        if len(s.ciphertext) != ENCRYPTED_SHARE_BYTES:
            raise SecAggPlusError("encrypted share has the wrong size")
        out += _U32.pack(s.src) + _U32.pack(s.dst) + s.ciphertext
    return bytes(out)


def shares_from_bytes(data: bytes) -> list[EncryptedShare]:
    size = 8 + ENCRYPTED_SHARE_BYTES
    if not isinstance(data, bytes | bytearray) or len(data) % size:
        raise SecAggPlusError("encrypted shares have the wrong size")
    data = bytes(data)
    return [
        EncryptedShare(_U32.unpack_from(data, i)[0], _U32.unpack_from(data, i + 4)[0], data[i + 8 : i + size])
        for i in range(0, len(data), size)
    ]


def indices_to_bytes(values: Iterable[int]) -> bytes:
    return b"".join(_U32.pack(int(v)) for v in values)


def indices_from_bytes(data: bytes) -> tuple[int, ...]:
    if not isinstance(data, bytes | bytearray) or len(data) % 4:
        raise SecAggPlusError("index list bytes have the wrong size")
    return tuple(_U32.unpack_from(data, i)[0] for i in range(0, len(data), 4))


@dataclass(frozen=True)
class UnmaskReply:
    """Stage 4 message of miner ``src``: its shares of survivors' self-mask seeds and of dropped
    miners' mask secrets (keys: the neighbour's roster index)."""

    src: int
    self_shares: Mapping[int, bytes]
    mask_shares: Mapping[int, bytes]

    def to_bytes(self) -> bytes:
        out = bytearray(_U32.pack(self.src) + _U32.pack(len(self.self_shares)) + _U32.pack(len(self.mask_shares)))
        for table in (self.self_shares, self.mask_shares):
            for v in sorted(table):
                out += _U32.pack(v) + table[v]
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskReply:
        if not isinstance(data, bytes | bytearray) or len(data) < 12:
            raise SecAggPlusError("unmask reply too short")
        data = bytes(data)
        src, a, b = struct.unpack_from(">III", data)
        size = 4 + shamir.SHARE_BYTES
        if len(data) != 12 + (a + b) * size:
            raise SecAggPlusError("unmask reply has the wrong size")
        entries = [(_U32.unpack_from(data, 12 + i * size)[0], data[16 + i * size : 12 + (i + 1) * size]) for i in range(a + b)]
        return cls(src, dict(entries[:a]), dict(entries[a:]))


# -- the miner's side ----------------------------------------------------------------------------------------


@dataclass
class MinerSession:
    """A miner's private state for one tag (kept by the miner between stages, never sent)."""

    tag: RoundTag
    address: str
    keys: EphemeralKeys
    config: SecAggPlusConfig
    self_seed: bytes = field(default=b"", repr=False)
    roster: tuple[AdvertiseKeys, ...] = ()
    index: int = -1
    shared: tuple[int, ...] = ()
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)  # v -> (b_v share, mask_v share)
    stage: str = "advertised"  # advertised -> shared -> masked -> unmasked

    @property
    def params(self) -> Params:
        return params_for(len(self.roster), self.config)

    def neighbours(self) -> tuple[int, ...]:
        p = self.params
        return neighbours(p.n, p.degree, graph_seed(self.tag, [a.address for a in self.roster]))[self.index]

    def to_bytes(self) -> bytes:
        """JSON of the state (secrets included: the caller keeps it as private as the miner's keys)."""
        t = self.tag
        return json.dumps(
            {
                "tag": [t.domain.hex(), t.task_id, t.round, t.attempt, t.support_hash.hex()],
                "address": self.address,
                "keys": [self.keys.enc_secret.hex(), self.keys.mask_secret.hex()],
                "config": [self.config.bits, self.config.degree_factor, self.config.threshold_fraction,
                           self.config.min_survivors_fraction, self.config.min_survivors],
                "self_seed": self.self_seed.hex(),
                "roster": roster_to_bytes(self.roster).hex(),
                "index": self.index,
                "shared": list(self.shared),
                "held": {str(v): [a.hex(), b.hex()] for v, (a, b) in self.held.items()},
                "stage": self.stage,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> MinerSession:
        try:
            raw = json.loads(bytes(data))
            d, task, rnd, att, sh = raw["tag"]
            bits, df, tf, mf, ms = raw["config"]
            return cls(
                tag=RoundTag(bytes.fromhex(d), task, rnd, att, bytes.fromhex(sh)),
                address=raw["address"],
                keys=EphemeralKeys(bytes.fromhex(raw["keys"][0]), bytes.fromhex(raw["keys"][1])),
                config=SecAggPlusConfig(bits, df, tf, mf, ms),
                self_seed=bytes.fromhex(raw["self_seed"]),
                roster=roster_from_bytes(bytes.fromhex(raw["roster"])),
                index=int(raw["index"]),
                shared=tuple(raw["shared"]),
                held={int(v): (bytes.fromhex(a), bytes.fromhex(b)) for v, (a, b) in raw["held"].items()},
                stage=str(raw["stage"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise SecAggPlusError(f"unreadable miner session: {exc}") from exc


def advertise(tag: RoundTag, eth_key: bytes, config: SecAggPlusConfig) -> tuple[MinerSession, AdvertiseKeys]:
    """Stage 1 (miner): fresh keys for ``tag`` and their signed advertisement."""
    keys = EphemeralKeys.generate()
    advert = sign_keys(tag, eth_key, keys)
    return MinerSession(tag, advert.address, keys, config), advert


def _require_stage(session: MinerSession, expected: str, action: str) -> None:
    if session.stage != expected:
        raise UnmaskRefused(f"{action} refused: this miner is at stage {session.stage!r} of attempt "
                            f"{session.tag.attempt}, expected {expected!r} (each stage runs once per attempt)")


def share_keys(session: MinerSession, roster: Sequence[AdvertiseKeys]) -> list[EncryptedShare]:
    """Stage 2 (miner): check the roster, draw ``b_u``, share it and the mask secret among the
    neighbours (threshold ``t``) and encrypt each neighbour's pair of shares. Updates ``session``."""
    _require_stage(session, "advertised", "sharing keys")
    roster = tuple(roster)
    addresses = [to_checksum_address(a.address) for a in roster]
    if addresses != sorted(set(addresses)):
        raise SecAggPlusError("roster must be sorted by address without duplicates")
    mine = [i for i, a in enumerate(addresses) if a == to_checksum_address(session.address)]
    if len(mine) != 1:
        raise SecAggPlusError("this miner is not in the roster")
    index = mine[0]
    if roster[index].enc_public != session.keys.enc_public or roster[index].mask_public != session.keys.mask_public:
        raise SecAggPlusError("the roster carries other keys for this miner")
    for advert in roster:
        advert.verify(session.tag)
    session.roster, session.index = roster, index
    params = session.params  # raises for fewer than 3 miners
    if params.n < params.min_survivors:
        raise UnmaskRefused(f"roster of {params.n} < {params.min_survivors} required survivors")
    nbrs = session.neighbours()
    session.self_seed = secrets.token_bytes(shamir.SECRET_BYTES)
    points = [v + 1 for v in nbrs]
    self_shares = shamir.split(session.self_seed, params.threshold, points)
    mask_shares = shamir.split(session.keys.mask_secret, params.threshold, points)
    out = []
    for v, b_share, s_share in zip(nbrs, self_shares, mask_shares, strict=True):
        key = _share_key(session.keys.enc_secret, roster[v].enc_public, session.tag)
        nonce = secrets.token_bytes(12)
        aad = session.tag.encode() + _U32.pack(index) + _U32.pack(v)
        out.append(EncryptedShare(index, v, nonce + AESGCM(key).encrypt(nonce, b_share + s_share, aad)))
    session.stage = "shared"
    return out


def mask_input(
    session: MinerSession,
    shared: Sequence[int],
    incoming: Sequence[EncryptedShare],
    q: np.ndarray,
    indices: np.ndarray,
) -> np.ndarray:
    """Stage 3 (miner): keep the neighbours' shares (from ``incoming``) and return the masked input
    ``y_u`` (uint32/uint64 words, one per support index) of the quantized values ``q``.

    Refuses a second call for the same tag (two inputs under one mask would reveal their difference),
    a ``U2`` (``shared``) smaller than ``min_survivors`` or without this miner, a missing, extra or
    undecryptable share, and a support whose hash is not the tag's.
    """
    _require_stage(session, "shared", "masking an input")
    params = session.params
    u2 = tuple(int(v) for v in shared)
    if list(u2) != sorted(set(u2)) or any(not 0 <= v < params.n for v in u2):
        raise SecAggPlusError("U2 must be sorted, unique roster indices")
    if session.index not in u2:
        raise SecAggPlusError("U2 does not contain this miner")
    if len(u2) < params.min_survivors:
        raise UnmaskRefused(f"only {len(u2)} miners shared keys < {params.min_survivors} required")
    idx = np.asarray(indices, dtype=np.int64)
    if _support_hash(idx) != session.tag.support_hash:
        raise SecAggPlusError("the support does not match the tag's support hash")
    xs = np.asarray(q)
    if xs.ndim != 1 or xs.shape != idx.shape or (xs.size and xs.dtype.kind not in "iu"):
        raise SecAggPlusError(f"q must be a 1-D integer vector with one value per support index ({idx.size})")
    if xs.size and int(np.max(np.abs(xs.astype(np.int64)))) > params.max_abs:
        raise SecAggPlusError(f"|q| exceeds 2^(bits-1)-1 = {params.max_abs}")
    nbrs = [v for v in session.neighbours() if v in set(u2)]
    by_src: dict[int, EncryptedShare] = {}
    for share in incoming:
        if share.dst != session.index or share.src not in nbrs or share.src in by_src:
            raise SecAggPlusError(f"unexpected share from {share.src} to {share.dst}")
        by_src[share.src] = share
    missing = sorted(set(nbrs) - set(by_src))
    if missing:
        raise SecAggPlusError(f"no shares from neighbours {missing} although they are in U2")
    held: dict[int, tuple[bytes, bytes]] = {}
    for v, share in by_src.items():
        key = _share_key(session.keys.enc_secret, session.roster[v].enc_public, session.tag)
        aad = session.tag.encode() + _U32.pack(v) + _U32.pack(session.index)
        if len(share.ciphertext) != ENCRYPTED_SHARE_BYTES:
            raise SecAggPlusError(f"share from {v} has the wrong size")
        try:
            plain = AESGCM(key).decrypt(share.ciphertext[:12], share.ciphertext[12:], aad)
        except InvalidTag as exc:
            raise SecAggPlusError(f"share from {v} does not decrypt (tampered or misrouted)") from exc
        held[v] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        for part in held[v]:
            if shamir.parse_share(part)[0] != session.index + 1:
                raise SecAggPlusError(f"share from {v} is for another point")
    unsigned = _unsigned(params.word_bits)
    signed = np.int32 if params.word_bits == 32 else np.int64
    y = xs.astype(signed).view(unsigned) + expand(session.self_seed, session.tag, b"self", idx, params.word_bits)
    for v in nbrs:
        g = expand(pair_seed(session.keys.mask_secret, session.roster[v].mask_public, session.tag, session.index, v),
                   session.tag, b"pair", idx, params.word_bits)
        y = y + g if session.index < v else y - g  # unsigned arithmetic wraps modulo 2^w
    session.shared, session.held, session.stage = u2, held, "masked"
    return y


def unmask(session: MinerSession, survivors: Sequence[int]) -> UnmaskReply:
    """Stage 4 (miner): for each neighbour in ``U2``, EITHER its self-mask share (in ``survivors``)
    OR its mask-secret share (dropped), once per tag. Refuses when this miner is not a survivor,
    ``survivors`` is not inside ``U2``, or fewer than ``min_survivors`` are claimed."""
    _require_stage(session, "masked", "unmasking")
    params = session.params
    s = tuple(int(v) for v in survivors)
    if list(s) != sorted(set(s)):
        raise UnmaskRefused("survivors must be sorted and unique")
    if not set(s) <= set(session.shared):
        raise UnmaskRefused("survivors outside the miners who shared keys")
    if session.index not in s:
        raise UnmaskRefused("the server claims this miner dropped, yet asks it to unmask")
    if len(s) < params.min_survivors:
        raise UnmaskRefused(f"only {len(s)} survivors claimed < {params.min_survivors} required")
    alive = set(s)
    self_shares = {v: b for v, (b, _) in session.held.items() if v in alive}
    mask_shares = {v: m for v, (_, m) in session.held.items() if v not in alive}
    session.stage = "unmasked"
    return UnmaskReply(session.index, self_shares, mask_shares)


# -- the server's side ---------------------------------------------------------------------------------------


def route_shares(shares: Iterable[EncryptedShare], shared: Iterable[int]) -> dict[int, list[EncryptedShare]]:
    """Server: the encrypted shares addressed to each miner of ``U2``, from senders in ``U2`` only."""
    u2 = set(shared)
    out: dict[int, list[EncryptedShare]] = {v: [] for v in sorted(u2)}
    for share in shares:
        if share.src in u2 and share.dst in u2:
            out[share.dst].append(share)
    return out


def unmask_sum(
    tag: RoundTag,
    config: SecAggPlusConfig,
    roster: Sequence[AdvertiseKeys],
    shared: Sequence[int],
    masked_inputs: Mapping[int, np.ndarray],
    replies: Sequence[UnmaskReply],
    indices: np.ndarray,
) -> np.ndarray:
    """Server: the int64 sum of the survivors' quantized values (survivors = keys of ``masked_inputs``).

    Reconstructs each survivor's self-mask seed and each dropped miner's mask secret (``U2`` minus
    survivors) from ``threshold`` shares of ``replies``, removes the masks and checks the range.
    Raises SecAggPlusError when shares are missing or a mask secret does not match its advertised key,
    DecryptionRangeError when the result cannot be a sum of valid inputs.
    """
    params = params_for(len(roster), config)
    survivors = sorted(masked_inputs)
    dropped = sorted(set(shared) - set(survivors))
    if not set(survivors) <= set(shared):
        raise SecAggPlusError("a masked input from a miner outside U2")
    if len(survivors) < params.min_survivors:
        raise SecAggPlusError(f"{len(survivors)} survivors < {params.min_survivors} required")
    idx = np.asarray(indices, dtype=np.int64)
    unsigned = _unsigned(params.word_bits)
    total = np.zeros(idx.size, dtype=unsigned)
    for u in survivors:
        y = np.asarray(masked_inputs[u])
        if y.dtype != unsigned or y.shape != idx.shape:
            raise SecAggPlusError(f"masked input of {u} is {y.dtype}{y.shape}, expected {np.dtype(unsigned)}({idx.size},)")
        total += y
    graph = neighbours(params.n, params.degree, graph_seed(tag, [a.address for a in roster]))

    def recover(v: int, which: str) -> bytes:
        shares = [(r.self_shares if which == "self" else r.mask_shares).get(v) for r in replies if r.src in graph[v]]
        present = [s for s in shares if s is not None]
        if len(present) < params.threshold:
            raise SecAggPlusError(f"{which}-mask secret of miner {v}: {len(present)} shares < threshold {params.threshold}")
        return shamir.combine(present, params.threshold)

    for v in survivors:
        total -= expand(recover(v, "self"), tag, b"self", idx, params.word_bits)
    for v in dropped:
        secret = recover(v, "mask")
        if _x25519_public(secret) != roster[v].mask_public:
            raise SecAggPlusError(f"reconstructed mask secret of dropped miner {v} does not match its key")
        for u in graph[v]:
            if u in masked_inputs:
                g = expand(pair_seed(secret, roster[u].mask_public, tag, u, v), tag, b"pair", idx, params.word_bits)
                total = total - g if u < v else total + g
    signed = np.int32 if params.word_bits == 32 else np.int64
    out = total.view(signed).astype(np.int64)
    bound = len(survivors) * params.max_abs
    bad = np.flatnonzero((out > bound) | (out < -bound))
    if bad.size:
        raise DecryptionRangeError(f"{bad.size} of {idx.size} sums outside [-{bound}, {bound}]: wrong shares", bad)
    return out


def masked_to_bytes(y: np.ndarray) -> bytes:
    """Wire bytes of a masked input: the masked backend's format (``MMM2`` 32-bit / ``MMM1`` 64-bit)."""
    return masked.ciphertext_to_bytes(y)


def masked_from_bytes(data: bytes, k: int, word_bits: int) -> np.ndarray:
    """Parse a masked input of ``k`` words; raises when malformed or of another word size."""
    y = masked.ciphertext_from_bytes(data, k)
    if y.dtype != _unsigned(word_bits):
        raise SecAggPlusError(f"masked input has {y.dtype.itemsize * 8}-bit words, expected {word_bits}")
    return y
