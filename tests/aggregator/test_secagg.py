"""The uniform backend interface: all three backends agree, bytes round trip, errors are typed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import secagg
from aggregator.secagg import (
    BACKENDS,
    DecryptionRangeError,
    MalformedCiphertextError,
    MalformedKeyError,
    MinerKeys,
    PublisherKeys,
    SecAggError,
)

TASK, ROUND = 11, 4


@settings(max_examples=15, deadline=None)
@given(
    backend=st.sampled_from(BACKENDS),
    n_all=st.integers(min_value=1, max_value=4),
    k=st.integers(min_value=0, max_value=8),
    bits=st.sampled_from([4, 8, 15]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    data=st.data(),
)
def test_round_trip_all_backends(backend, n_all, k, bits, seed, data, publisher, aggregator_keys, miners) -> None:
    rng = np.random.default_rng(seed)
    max_abs = (1 << (bits - 1)) - 1
    idx = np.sort(rng.choice(1000, size=k, replace=False))
    xs = [rng.integers(-max_abs, max_abs + 1, size=k) for _ in range(n_all)]
    cts = [
        secagg.encrypt(backend, x, idx, TASK, ROUND, m.secret, publisher.public, aggregator_keys.public, bits=bits)
        for x, m in zip(xs, miners, strict=False)
    ]
    assert all(len(c) == secagg.ciphertext_size(backend, k) for c in cts)
    subset = data.draw(st.lists(st.integers(0, n_all - 1), min_size=1, max_size=n_all, unique=True))
    key = secagg.functional_key(backend, publisher.secret, [miners[i].public for i in subset], TASK, ROUND, idx)
    total = secagg.decrypt_sum(
        backend, [cts[i] for i in subset], key, len(subset), bits,
        publisher_public=publisher.public, aggregator_public=aggregator_keys.public, max_table=512,
    )
    assert total.dtype == np.int64
    assert np.array_equal(total, np.sum([xs[i] for i in subset], axis=0) if k else np.zeros(0))


def test_key_types() -> None:
    m = MinerKeys.generate()
    assert isinstance(m, MinerKeys) and len(m.secret) == 32 and len(m.public) == 33
    assert PublisherKeys.from_secret(m.secret).public == m.public
    assert secagg.sum_bound(10, 15) == 10 * 16383
    assert len(secagg.ciphertext_hash(b"abc")) == 32


@pytest.mark.parametrize("backend", ["masked", "nddfe"])
def test_wrong_set_detected(backend, publisher, aggregator_keys, miners) -> None:
    idx = np.arange(6)
    xs = [np.arange(6) * (i + 1) for i in range(3)]
    cts = [secagg.encrypt(backend, x, idx, TASK, ROUND, m.secret, publisher.public, aggregator_keys.public)
           for x, m in zip(xs, miners, strict=False)]
    key = secagg.functional_key(backend, publisher.secret, [m.public for m in miners[:2]], TASK, ROUND, idx)
    with pytest.raises(DecryptionRangeError):
        secagg.decrypt_sum(backend, [cts[0], cts[2]], key, 2, publisher_public=publisher.public,
                           aggregator_public=aggregator_keys.public, max_table=512)


def test_errors(publisher, aggregator_keys, miners) -> None:
    idx = np.arange(3)
    x = np.array([1, 2, 3])
    with pytest.raises(SecAggError, match="unknown secagg backend"):
        secagg.encrypt("paillier", x, idx, TASK, ROUND)  # type: ignore[arg-type]
    with pytest.raises(MalformedKeyError, match="miner_secret"):
        secagg.encrypt("masked", x, idx, TASK, ROUND)
    with pytest.raises(MalformedKeyError, match="aggregator_public"):
        secagg.encrypt("nddfe", x, idx, TASK, ROUND, miners[0].secret, publisher.public)
    with pytest.raises(SecAggError, match="indices"):
        secagg.encrypt("none", x, np.arange(4), TASK, ROUND)
    with pytest.raises(SecAggError):
        secagg.encrypt("none", np.array([1 << 14]), np.arange(1), TASK, ROUND)
    with pytest.raises(SecAggError, match="bits"):
        secagg.encrypt("none", x, idx, TASK, ROUND, bits=40)
    ct = secagg.encrypt("none", x, idx, TASK, ROUND)
    key = secagg.functional_key("none", None, [], TASK, ROUND, idx)
    assert secagg.decrypt_sum("none", [ct, ct], key, 2).tolist() == [2, 4, 6]
    with pytest.raises(SecAggError, match="n=3"):
        secagg.decrypt_sum("none", [ct, ct], key, 3)
    with pytest.raises(MalformedKeyError, match="does not belong"):
        secagg.decrypt_sum("masked", [ct], key, 1)
    with pytest.raises(MalformedCiphertextError):
        secagg.decrypt_sum("none", [ct[:-1]], key, 1)
    nd = secagg.encrypt("nddfe", x, idx, TASK, ROUND, miners[0].secret, publisher.public, aggregator_keys.public)
    ndkey = secagg.functional_key("nddfe", publisher.secret, [miners[0].public], TASK, ROUND, idx)
    with pytest.raises(MalformedKeyError, match="publisher_public"):
        secagg.decrypt_sum("nddfe", [nd], ndkey, 1)
    with pytest.raises(MalformedCiphertextError):
        secagg.decrypt_sum("nddfe", [ct], ndkey, 1, publisher_public=publisher.public,
                           aggregator_public=aggregator_keys.public)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_round_pipeline(backend, publisher, aggregator_keys, miners) -> None:
    """support -> DGC -> quantize -> score/commitment -> encrypt -> key -> decrypt -> dequantize."""
    from aggregator.commitments import commitment, new_nonce
    from aggregator.dgc import DGCConfig, DGCState, k_for_density
    from aggregator.quantize import dequantize_sum, max_score, quantize, score
    from aggregator.support import select_support, support_hash

    d, n, clip, rnd = 400, 3, 0.5, 2
    cfg = DGCConfig(density=0.05, support="shared")
    k = k_for_density(d, cfg.density_at(rnd))
    prev = np.random.default_rng(0).normal(size=d)
    support = select_support(prev, k, b"prev-block-hash")
    assert len(support_hash(support)) == 32
    rng = np.random.default_rng(1)
    cts, qs = [], []
    for m in miners[:n]:
        state = DGCState(d, cfg)
        sent = state.step(rng.normal(scale=0.1, size=d), rnd, support)
        q = quantize(sent.values, clip, 15, rng=rng)
        assert 0 <= score(q) <= max_score(k, 15)
        assert len(commitment(score(q), new_nonce(), TASK, rnd, "0x" + "11" * 20)) == 32
        qs.append(q)
        cts.append(secagg.encrypt(backend, q, support, TASK, rnd, m.secret, publisher.public, aggregator_keys.public))
    key = secagg.functional_key(backend, publisher.secret, [m.public for m in miners[:n]], TASK, rnd, support)
    total = secagg.decrypt_sum(backend, cts, key, n, publisher_public=publisher.public,
                               aggregator_public=aggregator_keys.public)
    assert np.array_equal(total, np.sum(qs, axis=0))
    mean = dequantize_sum(total, n, clip, 15)
    assert mean.shape == (k,) and np.all(np.abs(mean) <= clip)


def test_error_hierarchy() -> None:
    """``except SecAggError`` catches every failure of a round, range errors included."""
    from aggregator.masked import MaskedError

    for exc in (DecryptionRangeError, MalformedCiphertextError, MalformedKeyError, MaskedError,
                secagg.UnknownBackendError):
        assert issubclass(exc, SecAggError) and issubclass(exc, ValueError)
    assert issubclass(DecryptionRangeError, ArithmeticError)
