"""The publisher's fields of a TaskSpec: canonical round trip, one hash per spec, field-specific errors."""

from __future__ import annotations

import pytest

from aggregator.task_spec import TaskSpec, TaskSpecError
from tests.fl_server.test_model_store import sample_spec


def test_publish_fields_round_trip_canonically() -> None:
    spec = sample_spec(model_kwargs='{"hidden":[16],"image_size":8}', min_samples=100, reward_wei=10**18,
                       deadline=2_000_000_000, aggregator="0x" + "22" * 20, target_commitment=b"\x07" * 32,
                       fee_bps=200, quorum_bps=5000, epochs=2, lr=0.1)
    text = spec.to_canonical_json()
    assert " " not in text and TaskSpec.from_json(text) == spec
    assert TaskSpec.from_json(text).spec_hash() == spec.spec_hash()
    assert sample_spec(min_samples=101).spec_hash() != sample_spec(min_samples=100).spec_hash()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model_kwargs", "[1]", "model_kwargs"),
        ("model_kwargs", "{", "model_kwargs"),
        ("min_samples", -1, "min_samples"),
        ("optimizer", "lbfgs", "optimizer"),
        ("lr", float("nan"), "lr"),
        ("quorum_bps", 10_001, "quorum_bps"),
        ("aggregator", "0x1234", "aggregator"),
        ("target_commitment", b"\x01" * 31, "target_commitment"),
    ],
)
def test_bad_publish_field_is_named(field: str, value: object, message: str) -> None:
    with pytest.raises(TaskSpecError, match=message):
        sample_spec(**{field: value})


def test_unknown_field_refused() -> None:
    text = sample_spec().to_canonical_json()[:-1] + ',"zz_extra":1}'
    with pytest.raises(TaskSpecError, match="unknown"):
        TaskSpec.from_json(text)
