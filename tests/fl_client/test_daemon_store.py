"""The daemon's download path refuses blobs whose bytes are not what the chain names."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from eth_utils import keccak

from aggregator.models import ModelSpec, build_model, state_to_bytes
from fl_client.store_client import StoreClient, StoreError, verify_model_bytes, verify_spec_bytes
from tests.fl_server.test_model_store import sample_spec


class HostileStore:
    """A store that serves whatever bytes it was given under any hash (what an attacker would run)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                data = outer.blobs.get(self.path.rsplit("/", 1)[-1], b"")
                self.send_response(200 if data else 404)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture()
def hostile() -> Iterator[HostileStore]:
    store = HostileStore()
    yield store
    store.server.shutdown()
    store.server.server_close()


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return state_to_bytes(build_model(ModelSpec("mlp", {"image_size": 8, "hidden": [16]}), seed=1).state_dict())


def test_genuine_model_and_spec_are_cached(hostile: HostileStore, tmp_path: Path, model_bytes: bytes) -> None:
    digest = keccak(model_bytes).hex()
    spec_bytes = sample_spec().to_canonical_json().encode()
    sdigest = keccak(spec_bytes).hex()
    hostile.blobs.update({digest: model_bytes, sdigest: spec_bytes})
    client = StoreClient(hostile.url, tmp_path / "cache")
    assert client.fetch_model(bytes.fromhex(digest)) == model_bytes
    spec, raw = client.fetch_spec("0x" + sdigest)
    assert raw == spec_bytes and spec.architecture == "mlp"
    hostile.blobs.clear()  # served from the verified cache now
    assert client.fetch_model(digest) == model_bytes


def test_substituted_model_refused_and_not_cached(hostile: HostileStore, tmp_path: Path, model_bytes: bytes) -> None:
    chain_hash = keccak(model_bytes).hex()
    other = state_to_bytes(build_model(ModelSpec("mlp", {"image_size": 8, "hidden": [16]}), seed=2).state_dict())
    hostile.blobs[chain_hash] = other
    client = StoreClient(hostile.url, tmp_path / "cache")
    with pytest.raises(StoreError, match="the chain says"):
        client.fetch_model(chain_hash)
    assert not (tmp_path / "cache" / "models" / chain_hash).exists()


def test_pickle_with_matching_hash_refused(hostile: HostileStore, tmp_path: Path) -> None:
    blob = pickle.dumps({"w": [1.0, 2.0]})
    digest = keccak(blob).hex()  # the chain could name it: the hash alone does not make it a model
    hostile.blobs[digest] = blob
    with pytest.raises(StoreError, match="not safetensors"):
        StoreClient(hostile.url, tmp_path / "cache").fetch_model(digest)


def test_oversized_download_refused(hostile: HostileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fl_client.store_client as sc

    monkeypatch.setattr(sc, "MAX_SPEC_BYTES", 100)
    hostile.blobs["ab" * 32] = b"x" * 1000
    with pytest.raises(StoreError, match="exceeds the limit"):
        StoreClient(hostile.url, tmp_path / "cache").fetch_spec("ab" * 32)


def test_corrupted_cache_entry_is_refetched(hostile: HostileStore, tmp_path: Path, model_bytes: bytes) -> None:
    digest = keccak(model_bytes).hex()
    hostile.blobs[digest] = model_bytes
    client = StoreClient(hostile.url, tmp_path / "cache")
    client.fetch_model(digest)
    (tmp_path / "cache" / "models" / digest).write_bytes(b"tampered")
    assert client.fetch_model(digest) == model_bytes


def test_verify_functions_refuse_bad_input(model_bytes: bytes) -> None:
    with pytest.raises(StoreError):
        verify_model_bytes(model_bytes, "zz" * 32)
    spaced = sample_spec().to_canonical_json().replace(",", ", ").encode()
    with pytest.raises(StoreError, match="canonical"):
        verify_spec_bytes(spaced, keccak(spaced))
