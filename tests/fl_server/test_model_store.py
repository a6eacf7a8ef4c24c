"""The model store refuses every blob that is not what it claims to be, over real HTTP on loopback."""

from __future__ import annotations

import http.client
import io
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from eth_utils import keccak

from aggregator.models import ModelSpec, build_model, state_to_bytes
from aggregator.task_spec import TaskSpec
from fl_server.model_store import BlobRejected, BlobStore, serve, upload_blob


def sample_spec(**over: object) -> TaskSpec:
    base: dict = dict(
        chain_id=31337, verifying_contract="0x" + "11" * 20, task_id=1, publisher_public=b"\x02" * 33,
        aggregator_public=b"\x03" * 33, backend="masked", bits=15, clip=0.5, d=100, support_mode="shared",
        density=0.1, warmup_rounds=0, warmup_start=0.25, warmup_factor=0.25, threshold=2,
        architecture="mlp", dataset="digits", rounds=2,
    )
    base.update(over)
    return TaskSpec(**base)


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return state_to_bytes(build_model(ModelSpec("mlp", {"image_size": 8, "hidden": [16]}), seed=1).state_dict())


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    server = serve(tmp_path / "blobs", "127.0.0.1", 0, max_bytes=200_000, upload_token=b"s3cret")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}", tmp_path / "blobs"
    server.shutdown()
    server.server_close()


def put(url: str, kind: str, digest: str, data: bytes, token: str = "s3cret") -> requests.Response:
    return requests.put(f"{url}/{kind}/{digest}", data=data, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_round_trip_model_and_spec(store: tuple[str, Path], model_bytes: bytes) -> None:
    url, _ = store
    digest = upload_blob(url, "models", model_bytes, token="s3cret")
    assert digest == keccak(model_bytes).hex()
    assert requests.get(f"{url}/models/{digest}", timeout=10).content == model_bytes
    spec = sample_spec().to_canonical_json().encode()
    sdigest = upload_blob(url, "specs", spec, token="s3cret")
    assert requests.get(f"{url}/specs/{sdigest}", timeout=10).content == spec
    assert put(url, "models", digest, model_bytes).status_code == 200  # idempotent re-upload


def test_hash_mismatch_refused(store: tuple[str, Path], model_bytes: bytes) -> None:
    url, root = store
    wrong = keccak(b"something else").hex()
    resp = put(url, "models", wrong, model_bytes)
    assert resp.status_code == 422 and "not the claimed" in resp.text
    assert not any((root / "models").iterdir())


def test_pickle_and_junk_refused(store: tuple[str, Path]) -> None:
    url, root = store
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    for blob in (pickle.dumps({"w": [1, 2, 3]}), buf.getvalue(), b"\x00" * 64):
        resp = put(url, "models", keccak(blob).hex(), blob)
        assert resp.status_code == 422, resp.text
    assert not any((root / "models").iterdir())


def test_non_canonical_or_foreign_spec_refused(store: tuple[str, Path], model_bytes: bytes) -> None:
    url, _ = store
    pretty = b'{ "a": 1 }'
    assert put(url, "specs", keccak(pretty).hex(), pretty).status_code == 422
    spec = sample_spec().to_canonical_json()
    spaced = spec.replace(",", ", ").encode()  # same content, not canonical: would get a second hash
    assert put(url, "specs", keccak(spaced).hex(), spaced).status_code == 422
    assert put(url, "specs", keccak(model_bytes).hex(), model_bytes).status_code == 422


def test_oversized_body_refused_before_reading(store: tuple[str, Path]) -> None:
    url, _ = store
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("PUT", "/models/" + "ab" * 32)
    conn.putheader("Authorization", "Bearer s3cret")
    conn.putheader("Content-Length", str(10**9))  # the body never comes: the store must not wait for it
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413


def test_upload_needs_token(store: tuple[str, Path], model_bytes: bytes) -> None:
    url, _ = store
    assert put(url, "models", keccak(model_bytes).hex(), model_bytes, token="wrong").status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/models/../../etc/passwd",
        "/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/models/" + "AB" * 32,  # upper case: not the canonical name
        "/models/" + "ab" * 31,
        "/models/" + "ab" * 32 + "/x",
        "/models/" + "ab" * 32 + "?kind=../x",
        "/../models/" + "ab" * 32,
        "/other/" + "ab" * 32,
        "//etc/passwd",
    ],
)
def test_path_traversal_refused(store: tuple[str, Path], path: str, model_bytes: bytes) -> None:
    url, root = store
    host, port = url.removeprefix("http://").split(":")
    for method, body in (("GET", None), ("PUT", model_bytes)):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(method, path, body=body, headers={"Authorization": "Bearer s3cret"})
        assert conn.getresponse().status == 400
    assert not any((root / "models").iterdir())
    assert sorted(p.name for p in root.iterdir()) == ["models", "specs"]


def test_blobstore_validates_names_directly(tmp_path: Path, model_bytes: bytes) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(BlobRejected):
        store.put("models", "../" + keccak(model_bytes).hex()[3:], model_bytes)
    with pytest.raises(BlobRejected):
        store.get("../specs", "ab" * 32)
    with pytest.raises(BlobRejected, match="exceeds"):
        BlobStore(tmp_path, max_bytes=10).put("models", keccak(model_bytes).hex(), model_bytes)
