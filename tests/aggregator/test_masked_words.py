"""The masked backend's word size: 32-bit words whenever bits <= 16, 64-bit above."""

import numpy as np
import pytest

from aggregator import masked, secagg
from aggregator.secagg import DecryptionRangeError, MinerKeys, PublisherKeys


@pytest.mark.parametrize(("bits", "word_bytes"), [(15, 4), (16, 4), (17, 8), (20, 8)])
def test_sum_round_trips_and_size_follows_the_word(bits, word_bytes):
    pub = PublisherKeys.generate()
    miners = [MinerKeys.generate() for _ in range(5)]
    rng = np.random.default_rng(bits)
    top = 2 ** (bits - 1) - 1
    idx = np.arange(0, 300, 3)
    xs = [rng.integers(-top, top + 1, size=idx.size) for _ in miners]
    xs[0][:] = -top  # extremes, negative sums included
    cts = [secagg.encrypt("masked", x, idx, 4, 9, m.secret, pub.public, bits=bits) for x, m in zip(xs, miners, strict=True)]
    assert all(len(ct) == secagg.ciphertext_size("masked", idx.size, bits) == 8 + word_bytes * idx.size for ct in cts)
    key = secagg.functional_key("masked", pub.secret, [m.public for m in miners], 4, 9, idx, bits)
    assert np.array_equal(secagg.decrypt_sum("masked", cts, key, len(miners), bits), np.sum(xs, axis=0))


def test_32_bit_words_still_detect_a_key_for_another_set():
    pub = PublisherKeys.generate()
    miners = [MinerKeys.generate() for _ in range(3)]
    idx = np.arange(64)
    cts = [secagg.encrypt("masked", np.ones(64, dtype=np.int64), idx, 1, 1, m.secret, pub.public) for m in miners]
    wrong = secagg.functional_key("masked", pub.secret, [m.public for m in miners[:2]], 1, 1, idx)
    with pytest.raises(DecryptionRangeError):
        secagg.decrypt_sum("masked", cts, wrong, 3)


def test_word_sizes_cannot_be_mixed():
    pub, miner = PublisherKeys.generate(), MinerKeys.generate()
    idx = np.arange(4)
    ct32 = secagg.encrypt("masked", np.ones(4, dtype=np.int64), idx, 1, 1, miner.secret, pub.public, bits=15)
    key64 = secagg.functional_key("masked", pub.secret, [miner.public], 1, 1, idx, bits=20)
    with pytest.raises(masked.MaskedError, match="expected uint64"):
        secagg.decrypt_sum("masked", [ct32], key64, 1, 15)
