"""The miner's side of the model store: download a blob by the hash the chain names, verify, cache.

A miner trusts only hashes read from the chain (the task's ``modelHash`` and ``metadataHash``, each
round's candidate hash). Bytes are accepted when keccak256(bytes) equals that hash AND they parse as
what they claim to be (safetensors weights, a canonical task spec); anything else raises
:class:`StoreError` and nothing is cached. Downloads are streamed with a size cap, so a hostile
store cannot exhaust memory. The cache lives in the miner's own folder; a cached blob is re-hashed
when read.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import requests
from eth_utils import keccak

from aggregator.task_spec import TaskSpec, TaskSpecError

MAX_MODEL_BYTES = 64 * 1024 * 1024
MAX_SPEC_BYTES = 16_384
_HASH = re.compile(r"[0-9a-f]{64}")


class StoreError(RuntimeError):
    """A blob that could not be fetched, or whose bytes do not match the chain's hash or format."""


def _hex(digest: bytes | str) -> str:
    text = digest.hex() if isinstance(digest, bytes | bytearray) else str(digest).lower().removeprefix("0x")
    if not _HASH.fullmatch(text):
        raise StoreError(f"not a 32-byte hash: {text!r}")
    return text


def verify_model_bytes(data: bytes, expected: bytes | str) -> None:
    """Raise StoreError unless ``data`` hashes to ``expected`` and is safetensors (never a pickle)."""
    want = _hex(expected)
    got = keccak(data).hex()
    if got != want:
        raise StoreError(f"model bytes hash to {got}, the chain says {want}")
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK"):
        raise StoreError(f"model {want} is not safetensors: it looks like a pickle / torch.save archive")
    try:  # safetensors' own parser through numpy: no torch in the daemon (its memory stays small)
        from safetensors.numpy import load as st_load_numpy

        st_load_numpy(bytes(data))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, ValueError, TypeError on junk
        raise StoreError(f"model {want} is not safetensors: {exc}") from exc


def verify_spec_bytes(data: bytes, expected: bytes | str) -> TaskSpec:
    """The TaskSpec in ``data`` if it hashes to ``expected`` and is canonical; StoreError otherwise."""
    want = _hex(expected)
    got = keccak(data).hex()
    if got != want:
        raise StoreError(f"task spec bytes hash to {got}, the chain says {want}")
    try:
        spec = TaskSpec.from_json(data)
    except TaskSpecError as exc:
        raise StoreError(f"task spec {want} is malformed: {exc}") from exc
    if spec.to_canonical_json().encode() != data:
        raise StoreError(f"task spec {want} is not canonical JSON")
    return spec


class StoreClient:
    """Fetch-and-verify against one model store URL, caching verified blobs under ``cache_dir``."""

    def __init__(self, base_url: str, cache_dir: Path, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout

    def _download(self, kind: str, digest: str, limit: int) -> bytes:
        url = f"{self.base_url}/{kind}/{digest}"
        try:
            with requests.get(url, stream=True, timeout=self.timeout) as resp:
                if resp.status_code != 200:
                    raise StoreError(f"GET {url}: HTTP {resp.status_code}")
                declared = resp.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise StoreError(f"GET {url}: {declared} bytes exceeds the limit {limit}")
                chunks, total = [], 0
                for chunk in resp.iter_content(1 << 16):
                    total += len(chunk)
                    if total > limit:
                        raise StoreError(f"GET {url}: more than {limit} bytes")
                    chunks.append(chunk)
        except requests.RequestException as exc:
            raise StoreError(f"GET {url}: {exc}") from exc
        return b"".join(chunks)

    def _cached(self, kind: str, digest: str) -> Path:
        return self.cache_dir / kind / digest

    def _keep(self, kind: str, digest: str, data: bytes) -> None:
        path = self._cached(kind, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".dl-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def fetch_model(self, expected: bytes | str) -> bytes:
        """Verified safetensors bytes of the model whose keccak256 is ``expected``."""
        digest = _hex(expected)
        path = self._cached("models", digest)
        if path.exists():
            data = path.read_bytes()
            try:
                verify_model_bytes(data, digest)
                return data
            except StoreError:
                path.unlink()  # a corrupted cache entry is dropped and fetched again
        data = self._download("models", digest, MAX_MODEL_BYTES)
        verify_model_bytes(data, digest)
        self._keep("models", digest, data)
        return data

    def fetch_spec(self, expected: bytes | str) -> tuple[TaskSpec, bytes]:
        """The verified TaskSpec (and its bytes) whose keccak256 is ``expected``."""
        digest = _hex(expected)
        path = self._cached("specs", digest)
        if path.exists():
            data = path.read_bytes()
            try:
                return verify_spec_bytes(data, digest), data
            except StoreError:
                path.unlink()
        data = self._download("specs", digest, MAX_SPEC_BYTES)
        spec = verify_spec_bytes(data, digest)
        self._keep("specs", digest, data)
        return spec, data
