"""The network simulator: deterministic per seed, profiles by mix, events, deadline on a virtual clock."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from fl_server.__main__ import CONF_DIR
from fl_server.network_sim import (
    PROFILES,
    Arrival,
    NetworkConfig,
    NetworkConfigError,
    NetworkEvent,
    NetworkSim,
    build_network,
)

MIXED = {"good": 0.5, "average": 0.3, "poor": 0.1, "unstable": 0.1}


def _sim(seed: int = 1, n: int = 50, **kw) -> NetworkSim:
    kw.setdefault("mix", MIXED)
    return NetworkSim(NetworkConfig(name="t", **kw), n, seed)


def _arrivals(sim: NetworkSim, server_round: int, order: list[int]) -> dict[int, Arrival]:
    return {m: sim.arrival(m, server_round, train_seconds=2.0, upload_bytes=500_000, download_bytes=800_000) for m in order}


def test_same_seed_same_outcomes_regardless_of_call_order():
    a, b = _sim(seed=7), _sim(seed=7)
    forward = _arrivals(a, 3, list(range(50)))
    backward = _arrivals(b, 3, list(reversed(range(50))))
    assert forward == backward
    assert a.base_profiles == b.base_profiles


def test_another_seed_gives_other_outcomes():
    a, c = _sim(seed=7), _sim(seed=8)
    assert a.base_profiles != c.base_profiles or _arrivals(a, 3, [0, 1, 2]) != _arrivals(c, 3, [0, 1, 2])


def test_profiles_are_assigned_by_the_mix_exactly():
    sim = _sim(n=50)
    counts = {p: sim.base_profiles.count(p) for p in MIXED}
    assert counts == {"good": 25, "average": 15, "poor": 5, "unstable": 5}


def test_profile_ranges_are_respected_and_ordered():
    sim = _sim(n=200, seed=3)
    by_profile: dict[str, list[Arrival]] = {}
    for m in range(200):
        for r in range(1, 6):
            a = sim.arrival(m, r, train_seconds=1.0, upload_bytes=0, download_bytes=0)
            by_profile.setdefault(a.profile, []).append(a)
            lo, hi = PROFILES[a.profile].compute_factor
            assert lo <= a.compute_s <= hi
            if not a.dropped:
                lat_lo, lat_hi = PROFILES[a.profile].latency_ms
                assert lat_lo / 1000 <= a.network_s <= lat_hi / 1000
    mean = {p: sum(a.compute_s + a.network_s for a in v) / len(v) for p, v in by_profile.items()}
    assert mean["good"] < mean["average"] < mean["poor"]
    drop_rate = {p: sum(a.dropped for a in v) / len(v) for p, v in by_profile.items()}
    assert drop_rate["unstable"] > drop_rate["good"]


def test_more_bytes_take_longer_on_the_same_link():
    sim = _sim(seed=2)
    small = sim.arrival(4, 1, 1.0, upload_bytes=10_000)
    big = sim.arrival(4, 1, 1.0, upload_bytes=10_000_000)
    assert big.network_s > small.network_s
    bw = sim.bandwidth_bps(4, 1)
    assert math.isclose(big.network_s - small.network_s, (10_000_000 - 10_000) / bw, rel_tol=1e-9)


def test_deadline_times_out_late_and_lost_replies_and_the_clock_advances():
    sim = _sim(mix={"good": 1.0}, deadline_s=5.0, n=4)
    arrivals = {
        0: Arrival(0, "good", 1.0, 0.5, dropped=False),
        1: Arrival(1, "good", 4.0, 0.5, dropped=False),
        2: Arrival(2, "good", 9.0, 0.5, dropped=False),  # late
        3: Arrival(3, "good", 1.0, 0.1, dropped=True),  # lost
    }
    timing = sim.settle(arrivals, missing=[])
    assert timing.on_time == {0, 1}
    assert timing.timed_out == {2, 3} and timing.dropped == {3}
    assert timing.duration_s == 5.0 and sim.clock.now_s == 5.0
    timing = sim.settle({0: arrivals[0], 1: arrivals[1]})
    assert timing.duration_s == 4.5 and sim.clock.now_s == 9.5  # nobody late: the last arrival ends the round


def test_without_deadline_a_lost_reply_costs_the_fallback_timeout():
    sim = NetworkSim(NetworkConfig(name="t", mix={"good": 1.0}), 2, 0, fallback_timeout_s=60.0)
    timing = sim.settle({0: Arrival(0, "good", 1.0, 0.1, dropped=True)})
    assert timing.timed_out == {0} and timing.duration_s == 60.0


def test_scheduled_degrade_and_disconnect_events():
    events = (
        NetworkEvent(round=5, miner=3, action="degrade", profile="poor"),
        NetworkEvent(round=4, miner=1, action="disconnect", rounds=2),
        NetworkEvent(round=3, miner=2, action="disconnect"),
        NetworkEvent(round=8, miner=2, action="reconnect"),
    )
    sim = _sim(mix={"good": 1.0}, n=5, events=events)
    assert sim.profile_at(3, 4).name == "good" and sim.profile_at(3, 5).name == "poor"
    assert sim.profile_at(3, 9).name == "poor"
    assert [sim.online(1, r) for r in (3, 4, 5, 6)] == [True, False, False, True]
    assert [sim.online(2, r) for r in (2, 3, 7, 8)] == [True, False, False, True]
    assert sim.available([0, 1, 2, 3, 4], 4) == [0, 3, 4]


def test_nodes_are_numbered_by_sorted_id():
    sim = _sim(n=3)
    index = sim.index_nodes([900, 12, 77])
    assert index == {12: 0, 77: 1, 900: 2}
    assert sim.miner_of(900) == 2


def test_nominal_train_time_is_deterministic():
    sim = _sim(train_time="nominal", nominal_seconds_per_example=0.002)
    assert sim.train_seconds(measured_s=123.0, examples_processed=500) == pytest.approx(1.0)
    measured = _sim()
    assert measured.train_seconds(measured_s=3.5, examples_processed=500) == 3.5


@pytest.mark.parametrize("name", ["perfect", "good", "average", "poor", "unstable", "mixed"])
def test_shipped_configs_load(name):
    cfg = OmegaConf.load(f"{CONF_DIR}/network/{name}.yaml")
    sim = build_network(cfg, num_miners=20, seed=0)
    if name == "perfect":
        assert sim is None  # the demo's default: nothing simulated
    else:
        assert sim is not None and sim.config.name == name


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"mix": {"wifi": 1.0}}, "unknown profiles"),
        ({"mix": {"good": 1.0}, "deadline_s": -1}, "deadline_s"),
        ({"mix": {"good": 1.0}, "speed": 3}, "unknown keys"),
        ({"mix": {"good": 1.0}, "events": [{"round": 2, "miner": 0, "action": "explode"}]}, "action"),
        ({"mix": {"good": 1.0}, "events": [{"round": 2, "miner": 0, "action": "degrade"}]}, "needs a profile"),
        ({"mix": {"good": 1.0}, "profiles": {"good": {"loss": 1.5}}}, "loss"),
        ({"mix": {"good": 0.0}}, "positive sum"),
    ],
)
def test_bad_configs_fail_with_a_specific_message(bad, message):
    with pytest.raises(NetworkConfigError, match=message):
        build_network(bad, num_miners=4, seed=0)


def test_profile_overrides_apply():
    sim = build_network({"mix": {"poor": 1.0}, "deadline_s": 10, "profiles": {"poor": {"compute_factor": [50, 50]}}}, 2, 0)
    assert sim is not None and sim.compute_factor(0, 1) == 50.0


def test_quorum_closes_the_round_early_but_waits_for_must_wait_replies():
    sim = _sim(mix={"good": 1.0}, deadline_s=10.0, n=5)
    arrivals = {n: Arrival(n, "good", float(n + 1), 0.0, dropped=False) for n in range(5)}  # 1..5 s
    arrivals[4] = Arrival(4, "good", 20.0, 0.0, dropped=False)  # late anyway
    timing = sim.settle(arrivals, quorum=2)
    assert timing.on_time == {0, 1} and timing.cut == {2, 3} and timing.timed_out == {4}
    assert timing.duration_s == 2.0  # closed at the second reply, not at the deadline
    timing = sim.settle(arrivals, quorum=2, must_wait=[3, 4])
    assert timing.on_time == {0, 1, 2, 3} and timing.cut == frozenset() and timing.duration_s == 4.0
    timing = sim.settle({0: arrivals[0], 4: arrivals[4]}, quorum=2)  # quorum not reached: the deadline
    assert timing.on_time == {0} and timing.duration_s == 10.0
