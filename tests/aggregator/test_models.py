import pickle

import pytest
import torch

from aggregator.models import (
    ModelError,
    ModelSpec,
    build_model,
    flatten_state,
    load_state_checked,
    model_hash,
    num_parameters,
    state_from_bytes,
    state_to_bytes,
    unflatten_like,
)


def test_cnn_small_size_is_in_the_agreed_range():
    n = num_parameters(build_model(ModelSpec("cnn_small")))
    assert 100_000 <= n <= 250_000


@pytest.mark.parametrize("name", ["cnn_small", "mlp"])
def test_forward_shapes(name):
    model = build_model(ModelSpec(name, {"image_size": 28}), seed=0)
    assert model(torch.zeros(4, 1, 28, 28)).shape == (4, 10)


def test_same_seed_same_bytes_same_hash_and_round_trip():
    a = state_to_bytes(build_model(ModelSpec("cnn_small"), seed=3).state_dict())
    b = state_to_bytes(build_model(ModelSpec("cnn_small"), seed=3).state_dict())
    c = state_to_bytes(build_model(ModelSpec("cnn_small"), seed=4).state_dict())
    assert a == b and model_hash(a) == model_hash(b) and len(model_hash(a)) == 32
    assert model_hash(a) != model_hash(c)
    restored = state_from_bytes(a)
    model = build_model(ModelSpec("cnn_small"))
    load_state_checked(model, restored)
    assert state_to_bytes(model.state_dict()) == a


def test_pickle_and_junk_are_refused():
    state = build_model(ModelSpec("mlp"), seed=0).state_dict()
    with pytest.raises(ModelError, match="pickle"):
        state_from_bytes(pickle.dumps(state))
    with pytest.raises(ModelError, match="safetensors"):
        state_from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelError):
        state_from_bytes("not bytes")  # type: ignore[arg-type]


def test_weights_that_do_not_fit_are_refused():
    model = build_model(ModelSpec("mlp"), seed=0)
    other = build_model(ModelSpec("mlp", {"hidden": [10]}), seed=0).state_dict()
    with pytest.raises(ModelError, match="missing|shape"):
        load_state_checked(model, other)
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    first = sorted(bad)[0]
    bad[first][..., 0] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        load_state_checked(model, bad)


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(ModelError, match="unknown model"):
        build_model(ModelSpec("resnet9000"))
    with pytest.raises(ModelError, match="bad kwargs"):
        build_model(ModelSpec("mlp", {"nope": 1}))
    with pytest.raises(ModelError, match="malformed"):
        ModelSpec.from_json("{")


def test_flatten_unflatten_round_trip():
    state = build_model(ModelSpec("cnn_small"), seed=1).state_dict()
    flat = flatten_state(state)
    assert flat.size == num_parameters(build_model(ModelSpec("cnn_small")))
    back = unflatten_like(flat, state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ModelError):
        unflatten_like(flat[:-1], state)
