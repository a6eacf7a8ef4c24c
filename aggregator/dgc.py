"""Deep Gradient Compression (Lin et al., ICLR 2018) for federated updates (DESIGN.md section 3, step 2).

Per-miner state (float32, length ``d``): momentum ``u`` and accumulated velocity ``v``. One step on the
flattened update ``g`` (the miner's ``delta = w_local - w_global``):

1. local clipping: ``g <- g * min(1, clip_norm / ||g||_2)`` (skipped when ``clip_norm`` is None);
2. momentum correction: ``u <- m*u + g``; accumulation: ``v <- v + u``;
3. selection: ``shared`` mode sends ``v`` on the round's given support ``S_t``; ``local`` mode sends
   the classic per-miner top-k of ``|v|`` with ``k = ceil(density * d)`` (indices travel too);
4. error feedback: the sent coordinates are zeroed in ``v`` (the rest stays as residual), and
   momentum factor masking zeroes them in ``u`` too.

Mass is conserved exactly: ``sent + residual == v`` before selection. The warm-up density schedule
shrinks the density geometrically (25% -> 6.25% -> 1.56% -> 0.39% -> target by default).

State serializes to safetensors bytes (never pickle) so a miner survives restarts. Pure, no I/O.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

SupportMode = Literal["shared", "local"]
STATE_VERSION = 1
SPARSE_MAGIC = b"MMS1"
_SPARSE_HEADER = struct.Struct("<4sIIB")  # magic, d, k, flags (bit0: indices present)


class DGCError(ValueError):
    """Bad DGC input: wrong length, NaN/Inf update, bad density, corrupt state or sparse bytes."""


def warmup_density(
    round_: int, target: float, warmup_rounds: int = 4, start: float = 0.25, factor: float = 0.25
) -> float:
    """Density for 1-based round ``round_``: ``max(target, start * factor^(round_-1))`` during the first
    ``warmup_rounds`` rounds, then ``target``. Defaults give 0.25, 0.0625, 0.0156, 0.0039, target."""
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 1:
        raise DGCError(f"round_ must be an int >= 1 (rounds are 1-based), got {round_!r}")
    _check_density(target)
    if round_ <= warmup_rounds:
        return max(target, min(1.0, start * factor ** (round_ - 1)))
    return target


def _check_density(density: float) -> None:
    if not (isinstance(density, int | float) and 0.0 < float(density) <= 1.0):
        raise DGCError(f"density must be in (0, 1], got {density!r}")


def k_for_density(d: int, density: float) -> int:
    """Number of coordinates kept at ``density``: ``ceil(density * d)``, at least 1, at most d."""
    _check_density(density)
    if d < 1:
        raise DGCError(f"d must be >= 1, got {d}")
    return max(1, min(d, math.ceil(density * d - 1e-9)))


@dataclass(frozen=True)
class DGCConfig:
    """DGC hyper-parameters.

    ``momentum`` is the DGC momentum ``m`` (0.9 in the paper for raw gradients; for FL deltas, which
    are already multi-step updates, 0.0-0.5 is the safer choice). ``clip_norm`` None disables local
    clipping. ``momentum_masking`` zeroes the momentum of sent coordinates.
    """

    density: float = 0.01
    momentum: float = 0.0
    clip_norm: float | None = None
    momentum_masking: bool = True
    warmup_rounds: int = 4
    warmup_start: float = 0.25
    warmup_factor: float = 0.25
    support: SupportMode = "shared"

    def __post_init__(self) -> None:
        _check_density(self.density)
        if not 0.0 <= self.momentum < 1.0:
            raise DGCError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise DGCError(f"clip_norm must be positive and finite or None, got {self.clip_norm}")
        if self.support not in ("shared", "local"):
            raise DGCError(f"support must be 'shared' or 'local', got {self.support!r}")
        if self.warmup_rounds < 0:
            raise DGCError("warmup_rounds must be >= 0")

    def density_at(self, round_: int) -> float:
        """Warm-up schedule for 1-based ``round_``."""
        return warmup_density(
            round_, self.density, self.warmup_rounds, self.warmup_start, self.warmup_factor
        )


@dataclass(frozen=True)
class SparseUpdate:
    """Sent values of one step: ``values[i]`` belongs to coordinate ``indices[i]`` of a length-``d`` vector."""

    indices: np.ndarray  # int64, strictly increasing
    values: np.ndarray  # float32
    d: int

    @property
    def k(self) -> int:
        return int(self.indices.size)

    def to_dense(self) -> np.ndarray:
        """Dense float32 vector of length ``d`` with zeros off the support."""
        out = np.zeros(self.d, dtype=np.float32)
        out[self.indices] = self.values
        return out

    def nbytes(self, with_indices: bool = True) -> int:
        """Exact size of ``to_bytes(with_indices)``: 13-byte header + 4k values (+ 4k uint32 indices)."""
        return _SPARSE_HEADER.size + 4 * self.k * (2 if with_indices else 1)

    def to_bytes(self, with_indices: bool = True) -> bytes:
        """``<4sIIB`` header (b"MMS1", d, k, flags) + [uint32 LE indices] + float32 LE values.

        ``with_indices=False`` is the shared-support encoding (the receiver knows ``S_t``)."""
        head = _SPARSE_HEADER.pack(SPARSE_MAGIC, self.d, self.k, 1 if with_indices else 0)
        body = self.values.astype("<f4").tobytes()
        if with_indices:
            body = self.indices.astype("<u4").tobytes() + body
        return head + body

    @classmethod
    def from_bytes(cls, data: bytes, indices: np.ndarray | None = None) -> SparseUpdate:
        """Parse ``to_bytes`` output; ``indices`` must be given when the bytes carry none."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DGCError(f"sparse update must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _SPARSE_HEADER.size:
            raise DGCError("sparse update shorter than its header")
        magic, d, k, flags = _SPARSE_HEADER.unpack_from(data)
        if magic != SPARSE_MAGIC:
            raise DGCError(f"bad sparse update magic {magic!r}")
        has_idx = bool(flags & 1)
        expected = _SPARSE_HEADER.size + 4 * k * (2 if has_idx else 1)
        if len(data) != expected:
            raise DGCError(f"sparse update is {len(data)} bytes, expected {expected} for k={k}")
        off = _SPARSE_HEADER.size
        if has_idx:
            idx = np.frombuffer(data, dtype="<u4", count=k, offset=off).astype(np.int64)
            off += 4 * k
        else:
            if indices is None:
                raise DGCError("these bytes carry no indices: pass the round's support")
            idx = np.asarray(indices, dtype=np.int64)
            if idx.size != k:
                raise DGCError(f"support has {idx.size} indices, bytes carry {k} values")
        if k and (np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= d):
            raise DGCError("sparse indices must be strictly increasing and within [0, d)")
        vals = np.frombuffer(data, dtype="<f4", count=k, offset=off).astype(np.float32)
        return cls(indices=idx, values=vals, d=int(d))


class DGCState:
    """Per-miner DGC state: momentum ``u`` and velocity/residual ``v`` (float32, length ``d``)."""

    def __init__(self, d: int, config: DGCConfig | None = None) -> None:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise DGCError(f"d must be a positive int, got {d!r}")
        self.d = d
        self.config = config if config is not None else DGCConfig()
        self.momentum = np.zeros(d, dtype=np.float32)
        self.velocity = np.zeros(d, dtype=np.float32)
        self.steps = 0

    @property
    def residual(self) -> np.ndarray:
        """What has been accumulated but not sent yet (the velocity after the last step)."""
        return self.velocity

    def accumulate(self, update: np.ndarray) -> np.ndarray:
        """Steps 1-2 (clip, momentum correction, accumulation); returns the new velocity (a view)."""
        g = np.asarray(update, dtype=np.float32).ravel()
        if g.size != self.d:
            raise DGCError(f"update has {g.size} values, state has d={self.d}")
        if not np.all(np.isfinite(g)):
            raise DGCError("update contains NaN or Inf")
        clip = self.config.clip_norm
        if clip is not None:
            norm = float(np.linalg.norm(g.astype(np.float64)))
            if norm > clip:
                g = g * np.float32(clip / norm)
        m = np.float32(self.config.momentum)
        if m != 0:
            self.momentum *= m
            self.momentum += g
        else:
            self.momentum[:] = g
        self.velocity += self.momentum
        return self.velocity

    def step(self, update: np.ndarray, round_: int, support: np.ndarray | None = None) -> SparseUpdate:
        """One DGC step for 1-based round ``round_``.

        ``shared`` mode: ``support`` (sorted unique indices, the round's ``S_t``) is required and its
        values are sent. ``local`` mode: ``support`` must be None; top-k of ``|v|`` at the warm-up density.
        Returns the sent sparse update; the state keeps the residual.
        """
        if self.config.support == "shared":
            if support is None:
                raise DGCError("shared support mode needs the round's support indices")
            idx = np.asarray(support, dtype=np.int64).ravel()
            if idx.size and (np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= self.d):
                raise DGCError("support indices must be strictly increasing and within [0, d)")
        elif support is not None:
            raise DGCError("local support mode chooses its own indices; do not pass support")
        v = self.accumulate(update)
        if self.config.support == "local":
            k = k_for_density(self.d, self.config.density_at(round_))
            mag = np.abs(v)
            if k >= self.d:
                idx = np.arange(self.d, dtype=np.int64)
            else:
                idx = np.sort(np.argpartition(-mag, k - 1)[:k]).astype(np.int64)
        sent = SparseUpdate(indices=idx, values=v[idx].copy(), d=self.d)
        v[idx] = 0.0
        if self.config.momentum_masking:
            self.momentum[idx] = 0.0
        self.steps += 1
        return sent

    def to_bytes(self) -> bytes:
        """safetensors bytes of ``{momentum, velocity, meta=[version, d, steps]}``."""
        meta = np.array([STATE_VERSION, self.d, self.steps], dtype=np.int64)
        return st_save({"momentum": self.momentum, "velocity": self.velocity, "meta": meta})

    @classmethod
    def from_bytes(cls, data: bytes, config: DGCConfig | None = None) -> DGCState:
        """Restore a state saved by ``to_bytes``; raises DGCError on corrupt or mismatched bytes."""
        if not isinstance(data, bytes | bytearray):
            raise DGCError(f"DGC state must be bytes, got {type(data).__name__}")
        try:
            tensors = st_load(bytes(data))
        except Exception as exc:  # safetensors raises its own error types
            raise DGCError(f"DGC state is not valid safetensors: {exc}") from exc
        if set(tensors) != {"momentum", "velocity", "meta"}:
            raise DGCError(f"DGC state has tensors {sorted(tensors)}, expected momentum/velocity/meta")
        meta = tensors["meta"]
        if meta.dtype != np.int64 or meta.shape != (3,) or int(meta[0]) != STATE_VERSION:
            raise DGCError("DGC state has an unknown version or a bad meta tensor")
        d = int(meta[1])
        state = cls(d, config)
        for name in ("momentum", "velocity"):
            arr = tensors[name]
            if arr.dtype != np.float32 or arr.shape != (d,):
                raise DGCError(f"DGC state tensor {name} has {arr.dtype}{arr.shape}, expected float32({d},)")
        state.momentum = tensors["momentum"].copy()
        state.velocity = tensors["velocity"].copy()
        state.steps = int(meta[2])
        return state
