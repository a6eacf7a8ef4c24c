"""SecAgg+ on the shared support: correctness with dropouts, and the attacks of a lying aggregator."""

from __future__ import annotations

import dataclasses
import secrets

import numpy as np
import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import secaggplus as sp
from aggregator import shamir
from aggregator.bsgs import DecryptionRangeError
from aggregator.support import support_hash

ETH_KEYS = [bytes(Account.create().key) for _ in range(24)]
D = 5_000


def _tag(indices: np.ndarray, attempt: int = 1) -> sp.RoundTag:
    return sp.RoundTag(sp.domain_hash(31337, "0x" + "11" * 20), 7, 3, attempt, support_hash(indices))


class Federation:
    """n miners through stages 1-3 (real keys, signatures, shares, masks)."""

    def __init__(
        self, n: int, k: int = 64, config: sp.SecAggPlusConfig | None = None, seed: int = 0, mask: bool = True
    ) -> None:
        rng = np.random.default_rng(seed)
        self.config = config or sp.SecAggPlusConfig(bits=15, degree_factor=2.0)
        self.indices = np.sort(rng.choice(D, size=k, replace=False)).astype(np.int64)
        self.tag = _tag(self.indices)
        pairs = [sp.advertise(self.tag, key, self.config) for key in ETH_KEYS[:n]]
        self.roster, rejected = sp.build_roster(self.tag, [a for _, a in pairs])
        assert not rejected
        order = {a.address: i for i, a in enumerate(self.roster)}
        self.sessions = sorted((s for s, _ in pairs), key=lambda s: order[s.address])
        self.params = sp.params_for(n, self.config)
        self.shares = [share for s in self.sessions for share in sp.share_keys(s, self.roster)]
        self.u2 = list(range(n))
        self.routed = sp.route_shares(self.shares, self.u2)
        bound = self.params.max_abs
        self.q = [rng.integers(-bound, bound + 1, size=k) for _ in range(n)]
        self.y = {}
        if mask:
            self.y = {i: sp.mask_input(s, self.u2, self.routed[i], self.q[i], self.indices) for i, s in enumerate(self.sessions)}

    def graph(self) -> tuple[tuple[int, ...], ...]:
        return sp.neighbours(self.params.n, self.params.degree, sp.graph_seed(self.tag, [a.address for a in self.roster]))


# -- Shamir ----------------------------------------------------------------------------------------------


@given(threshold=st.integers(2, 8), extra=st.integers(0, 5))
@settings(max_examples=30, deadline=None)
def test_any_threshold_shares_recover_the_secret(threshold: int, extra: int) -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, threshold, list(range(1, threshold + extra + 1)))
    chosen = list(np.random.default_rng(threshold * 31 + extra).permutation(len(shares)))[:threshold]
    assert shamir.combine([shares[i] for i in chosen], threshold) == secret


def test_fewer_than_threshold_shares_are_consistent_with_any_secret() -> None:
    """t-1 shares pin nothing down: for ANY candidate secret a t-th point completes them to it."""
    t = 4
    shares = shamir.split(secrets.token_bytes(32), t, [1, 2, 3, 4, 5])
    known = [shamir.parse_share(s) for s in shares[: t - 1]]
    with pytest.raises(shamir.ShamirError, match="shares < threshold"):
        shamir.combine(shares[: t - 1], t)
    for candidate in (b"\0" * 32, b"\xff" * 32, secrets.token_bytes(32)):
        points = [(0, int.from_bytes(candidate, "big")), *known]
        x_new = 9  # Lagrange value at x_new of the polynomial through (0, candidate) and the t-1 shares
        y_new = 0
        for i, (xi, yi) in enumerate(points):
            num = den = 1
            for j, (xj, _) in enumerate(points):
                if i != j:
                    num, den = num * (x_new - xj) % shamir.PRIME, den * (xi - xj) % shamir.PRIME
            y_new = (y_new + yi * num * pow(den, -1, shamir.PRIME)) % shamir.PRIME
        forged = shares[: t - 1] + [x_new.to_bytes(4, "big") + y_new.to_bytes(shamir.ELEMENT_BYTES, "big")]
        assert shamir.combine(forged, t) == candidate


def test_shamir_rejects_bad_parameters_and_shares() -> None:
    with pytest.raises(shamir.ShamirError):
        shamir.split(b"short", 2, [1, 2])
    with pytest.raises(shamir.ShamirError):
        shamir.split(b"\0" * 32, 1, [1, 2])
    with pytest.raises(shamir.ShamirError):
        shamir.split(b"\0" * 32, 2, [1, 1])
    shares = shamir.split(b"\1" * 32, 2, [1, 2])
    with pytest.raises(shamir.ShamirError, match="duplicate"):
        shamir.combine([shares[0], shares[0]], 2)
    with pytest.raises(shamir.ShamirError):
        shamir.parse_share(shares[0][:-1])


# -- graph and parameters ---------------------------------------------------------------------------------


@given(n=st.integers(3, 120), factor=st.floats(0.5, 10.0), seed=st.binary(min_size=32, max_size=32))
@settings(max_examples=40, deadline=None)
def test_neighbour_graph_is_symmetric_regular_and_respects_the_threshold(n: int, factor: float, seed: bytes) -> None:
    params = sp.params_for(n, sp.SecAggPlusConfig(degree_factor=factor))
    graph = sp.neighbours(n, params.degree, seed)
    for i, nbrs in enumerate(graph):
        assert len(nbrs) == params.degree and i not in nbrs
        assert all(i in graph[j] for j in nbrs)
    assert params.degree // 2 < params.threshold <= params.degree  # honest majority of a neighbourhood
    assert params.min_survivors >= 2


def test_degree_is_logarithmic_for_large_rosters() -> None:
    config = sp.SecAggPlusConfig()
    assert sp.params_for(10, config).degree == 9  # complete for small federations
    assert sp.params_for(1000, config).degree < 100
    with pytest.raises(sp.SecAggPlusError, match="at least 3"):
        sp.params_for(2, config)


def test_a_plan_cannot_lower_the_threshold_below_a_majority() -> None:
    weak = sp.SecAggPlusConfig(threshold_fraction=0.0, min_survivors_fraction=0.0, degree_factor=2.0)
    p = sp.params_for(40, weak)
    assert p.threshold == p.degree // 2 + 1 and p.min_survivors == 2


# -- correctness --------------------------------------------------------------------------------------------


@given(n=st.integers(4, 12), dropout=st.sampled_from([0.0, 0.1, 0.3]), seed=st.integers(0, 2**16))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sum_is_exact_with_dropouts(n: int, dropout: float, seed: int) -> None:
    fed = Federation(n, k=48, config=sp.SecAggPlusConfig(bits=15, degree_factor=8.0), seed=seed)
    rng = np.random.default_rng(seed)
    dropped = set(rng.choice(n, size=int(dropout * n), replace=False).tolist())
    survivors = [i for i in range(n) if i not in dropped]
    replies = [sp.unmask(fed.sessions[i], survivors) for i in survivors]
    inputs = {i: fed.y[i] for i in survivors}
    total = sp.unmask_sum(fed.tag, fed.config, fed.roster, fed.u2, inputs, replies, fed.indices)
    assert np.array_equal(total, np.sum([fed.q[i] for i in survivors], axis=0))


def test_sum_with_64_bit_words_and_a_sparse_graph() -> None:
    fed = Federation(20, k=32, config=sp.SecAggPlusConfig(bits=20, degree_factor=1.0))
    assert fed.params.word_bits == 64 and fed.params.degree < 19
    survivors = [i for i in range(20) if i not in (2, 11)]
    replies = [sp.unmask(fed.sessions[i], survivors) for i in survivors]
    total = sp.unmask_sum(fed.tag, fed.config, fed.roster, fed.u2, {i: fed.y[i] for i in survivors}, replies, fed.indices)
    assert np.array_equal(total, np.sum([fed.q[i] for i in survivors], axis=0))


def test_miners_that_never_shared_keys_are_left_out() -> None:
    fresh = Federation(6, k=16, seed=1, mask=False)
    u2 = [0, 1, 2, 3, 4]  # miner 5's shares never reached the server
    routed = sp.route_shares([s for s in fresh.shares if s.src != 5], u2)
    ys = {i: sp.mask_input(fresh.sessions[i], u2, routed[i], fresh.q[i], fresh.indices) for i in u2}
    replies = [sp.unmask(fresh.sessions[i], u2) for i in u2]
    total = sp.unmask_sum(fresh.tag, fresh.config, fresh.roster, u2, ys, replies, fresh.indices)
    assert np.array_equal(total, np.sum([fresh.q[i] for i in u2], axis=0))


# -- a lying aggregator ---------------------------------------------------------------------------------------


def test_lying_aggregator_claiming_a_live_miner_dropped_cannot_get_both_shares() -> None:
    """The aggregator holds y_victim, then tells some of the victim's neighbours it survived (to get
    b_victim shares) and the others it dropped (to get its mask-secret shares). Whatever the split,
    it cannot reach the threshold for both secrets."""
    n = 9
    fed_template = Federation(n, k=16)
    victim = 4
    nbrs = fed_template.graph()[victim]
    t = fed_template.params.threshold
    for split in range(len(nbrs) + 1):
        fed = Federation(n, k=16, seed=split)
        told_alive = set(nbrs[:split])
        everyone = list(range(n))
        without_victim = [i for i in everyone if i != victim]
        replies = [sp.unmask(fed.sessions[i], everyone if i in told_alive else without_victim) for i in nbrs]
        self_shares = [r.self_shares[victim] for r in replies if victim in r.self_shares]
        mask_shares = [r.mask_shares[victim] for r in replies if victim in r.mask_shares]
        assert len(self_shares) + len(mask_shares) == len(nbrs)  # one answer per neighbour, never both
        assert len(self_shares) < t or len(mask_shares) < t
        for i in nbrs:  # and no second chance
            with pytest.raises(sp.UnmaskRefused, match="stage"):
                sp.unmask(fed.sessions[i], everyone)


@given(n=st.integers(8, 16), victim=st.integers(0, 15), claims=st.lists(st.booleans(), min_size=16, max_size=16),
       seed=st.integers(0, 2**16))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_split_of_claims_on_a_sparse_graph_leaves_one_secret_below_threshold(
    n: int, victim: int, claims: list[bool], seed: int
) -> None:
    """Property: on a sparse graph, whatever each neighbour is told about the victim (alive or dropped),
    the aggregator collects fewer than t shares of at least one of its two secrets."""
    fed = Federation(n, k=8, config=sp.SecAggPlusConfig(bits=15, degree_factor=1.0), seed=seed)
    victim %= n
    nbrs = fed.graph()[victim]
    assert len(nbrs) < n - 1  # sparse
    everyone, without = list(range(n)), [i for i in range(n) if i != victim]
    replies = [sp.unmask(fed.sessions[i], everyone if claims[j] else without) for j, i in enumerate(nbrs)]
    got_self = sum(victim in r.self_shares for r in replies)
    got_mask = sum(victim in r.mask_shares for r in replies)
    assert got_self + got_mask == len(nbrs)
    assert min(got_self, got_mask) < fed.params.threshold


def test_dropping_a_live_miner_leaves_its_input_masked_by_its_self_mask() -> None:
    """All neighbours told 'victim dropped': the aggregator gets the victim's mask secret and strips
    its pairwise masks, but y_victim still carries G(b_victim): what remains is not x_victim."""
    n = 6
    fed = Federation(n, k=256)
    victim = 2
    rest = [i for i in range(n) if i != victim]
    replies = [sp.unmask(fed.sessions[i], rest) for i in rest]
    p = fed.params
    mask_secret = shamir.combine([r.mask_shares[victim] for r in replies], p.threshold)
    assert mask_secret == fed.sessions[victim].keys.mask_secret  # the pairwise part is lost to it ...
    y = fed.y[victim].copy()
    for u in fed.graph()[victim]:
        g = sp.expand(sp.pair_seed(mask_secret, fed.roster[u].mask_public, fed.tag, u, victim), fed.tag, b"pair",
                      fed.indices, p.word_bits)
        y = y - g if victim < u else y + g
    residual = y.view(np.int32).astype(np.int64)
    assert not np.array_equal(residual, fed.q[victim])  # ... but the self mask still hides x_victim
    assert np.mean(np.abs(residual) > p.max_abs) > 0.99
    with pytest.raises(shamir.ShamirError):  # and no b_victim share was ever released
        shamir.combine([r.self_shares[victim] for r in replies if victim in r.self_shares], p.threshold)


def test_fewer_than_min_survivors_claimed_is_refused() -> None:
    fed = Federation(8, k=16)
    few = list(range(fed.params.min_survivors - 1))
    with pytest.raises(sp.UnmaskRefused, match="survivors claimed"):
        sp.unmask(fed.sessions[0], few)
    with pytest.raises(sp.SecAggPlusError, match="survivors"):
        sp.unmask_sum(fed.tag, fed.config, fed.roster, fed.u2, {i: fed.y[i] for i in few}, [], fed.indices)


def test_unmask_requests_that_contradict_the_protocol_are_refused() -> None:
    fed = Federation(6, k=16)
    with pytest.raises(sp.UnmaskRefused, match="dropped"):
        sp.unmask(fed.sessions[0], [1, 2, 3, 4, 5])  # "you dropped" to the miner itself
    with pytest.raises(sp.UnmaskRefused, match="outside"):
        sp.unmask(fed.sessions[1], [0, 1, 2, 3, 4, 5, 6])
    with pytest.raises(sp.UnmaskRefused, match="sorted"):
        sp.unmask(fed.sessions[1], [1, 0, 2, 3])


def test_a_second_masked_input_for_the_same_attempt_is_refused() -> None:
    """Two inputs under one mask would give the aggregator x1 - x2."""
    fed = Federation(5, k=16)
    with pytest.raises(sp.UnmaskRefused, match="stage"):
        sp.mask_input(fed.sessions[0], fed.u2, fed.routed[0], fed.q[0] * 0, fed.indices)


def test_a_substituted_key_in_the_roster_is_refused() -> None:
    """Man in the middle: the aggregator swaps a miner's mask key for its own."""
    fed = Federation(5, k=16)
    tag = fed.tag
    pairs = [sp.advertise(tag, key, fed.config) for key in ETH_KEYS[:5]]
    roster, _ = sp.build_roster(tag, [a for _, a in pairs])
    evil = dataclasses.replace(roster[1], mask_public=sp.EphemeralKeys.generate().mask_public)
    forged = (roster[0], evil, *roster[2:])
    session = next(s for s, _ in pairs if s.address == roster[0].address)
    with pytest.raises(sp.SecAggPlusError, match="signed by"):
        sp.share_keys(session, forged)
    other_tag = dataclasses.replace(tag, attempt=tag.attempt + 1)  # replayed keys of another attempt
    with pytest.raises(sp.SecAggPlusError, match="signed by"):
        roster[2].verify(other_tag)


def test_tampered_or_missing_shares_are_refused() -> None:
    fed = Federation(5, k=16, seed=3, mask=False)
    share = fed.routed[0][0]
    bad = dataclasses.replace(share, ciphertext=share.ciphertext[:-1] + bytes([share.ciphertext[-1] ^ 1]))
    with pytest.raises(sp.SecAggPlusError, match="does not decrypt"):
        sp.mask_input(fed.sessions[0], fed.u2, [bad, *fed.routed[0][1:]], fed.q[0], fed.indices)
    with pytest.raises(sp.SecAggPlusError, match="no shares"):
        sp.mask_input(fed.sessions[0], fed.u2, fed.routed[0][1:], fed.q[0], fed.indices)
    with pytest.raises(sp.UnmaskRefused, match="required"):
        sp.mask_input(fed.sessions[0], [0], [], fed.q[0], fed.indices)
    with pytest.raises(sp.SecAggPlusError, match="support"):
        sp.mask_input(fed.sessions[0], fed.u2, fed.routed[0], fed.q[0], fed.indices + 1)


def test_wrong_shares_are_detected_by_the_server() -> None:
    fed = Federation(6, k=64)
    survivors = [0, 1, 2, 3, 4]
    replies = [sp.unmask(fed.sessions[i], survivors) for i in survivors]
    inputs = {i: fed.y[i] for i in survivors}
    forged = shamir.split(secrets.token_bytes(32), fed.params.threshold, list(range(1, 7)))
    bad_mask = [sp.UnmaskReply(r.src, r.self_shares, {5: forged[r.src]}) for r in replies]
    with pytest.raises(sp.SecAggPlusError, match="does not match"):
        sp.unmask_sum(fed.tag, fed.config, fed.roster, fed.u2, inputs, bad_mask, fed.indices)
    bad_self = [sp.UnmaskReply(r.src, {**r.self_shares, 0: forged[r.src]}, r.mask_shares) for r in replies]
    with pytest.raises(DecryptionRangeError, match="wrong shares"):
        sp.unmask_sum(fed.tag, fed.config, fed.roster, fed.u2, inputs, bad_self, fed.indices)


# -- what one masked vector reveals ---------------------------------------------------------------------------


def test_a_single_masked_vector_looks_uniform_whatever_the_input() -> None:
    fed = Federation(4, k=4096, seed=5, mask=False)
    zeros = np.zeros(4096, dtype=np.int64)
    extreme = np.full(4096, fed.params.max_abs, dtype=np.int64)
    fed.y = {i: sp.mask_input(fed.sessions[i], fed.u2, fed.routed[i], q, fed.indices)
             for i, q in enumerate((zeros, extreme, zeros, extreme))}
    for y in fed.y.values():
        counts = np.bincount((y >> np.uint32(24)).astype(np.int64), minlength=256)  # top byte histogram
        expected = y.size / 256
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        assert chi2 < 400  # 255 dof: mean 255, sd ~22.6; a constant input would give ~1e6
    assert np.mean(fed.y[0] == fed.y[1]) < 0.01


def test_masks_differ_per_attempt_and_are_bound_to_the_coordinate() -> None:
    idx = np.array([3, 17, 4000], dtype=np.int64)
    tag = _tag(idx)
    seed = secrets.token_bytes(32)
    a = sp.expand(seed, tag, b"self", idx, 64)
    b = sp.expand(seed, dataclasses.replace(tag, attempt=2), b"self", idx, 64)
    assert not np.any(a == b)
    sub = sp.expand(seed, tag, b"self", idx[1:], 64)  # same coordinate, same word, wherever it sits
    assert np.array_equal(sub, a[1:])


def test_wire_formats_round_trip() -> None:
    fed = Federation(5, k=16)
    assert sp.roster_from_bytes(sp.roster_to_bytes(fed.roster)) == fed.roster
    assert sp.shares_from_bytes(sp.shares_to_bytes(fed.shares)) == fed.shares
    reply = sp.unmask(fed.sessions[0], [0, 1, 2, 4])
    assert sp.UnmaskReply.from_bytes(reply.to_bytes()) == reply
    restored = sp.MinerSession.from_bytes(fed.sessions[1].to_bytes())
    assert restored.held == fed.sessions[1].held and restored.stage == "masked"
    y = sp.masked_from_bytes(sp.masked_to_bytes(fed.y[0]), 16, 32)
    assert np.array_equal(y, fed.y[0])
    with pytest.raises(sp.SecAggPlusError):
        sp.masked_from_bytes(sp.masked_to_bytes(fed.y[0]), 16, 64)
    with pytest.raises(sp.SecAggPlusError):
        sp.UnmaskReply.from_bytes(reply.to_bytes()[:-1])
