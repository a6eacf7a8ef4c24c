"""Selection policies: slow miners penalised, quarantine and probation, fairness floor, decaying
exploration, pacer, local work caps, explained decisions; and a real Flower round with timeouts."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fl_server.__main__ import CONF_DIR
from fl_server.network_sim import NetworkConfig, NetworkSim
from fl_server.selection import (
    Completion,
    LocalWorkConfig,
    OortConfig,
    OortSelector,
    RandomSelector,
    ReplyFacts,
    RoundFeedback,
    SelectionConfigError,
    SelectionController,
    SelectionError,
    build_selector,
)


def drive(selector, durations: dict[int, float], rounds: int, deadline: float = math.inf,
          fails: Callable[[int, int], bool] = lambda node, r: False, first: int = 1) -> list[list[int]]:
    """Run ``rounds`` rounds against fixed per-miner durations: slower than ``deadline`` or
    ``fails(node, round)`` -> timeout; otherwise an on-time completion with equal utility."""
    picks = []
    for r in range(first, first + rounds):
        chosen = selector.select(list(durations), r)
        completed, timed_out = {}, {}
        for n in chosen:
            if fails(n, r) or durations[n] > deadline:
                timed_out[n] = fails(n, r)
            else:
                completed[n] = Completion(durations[n], network_s=0.1, upload_bytes=1000, train_loss=1.0, examples=100,
                                          compute_s=durations[n] - 0.1, steps=10)
        selector.observe(RoundFeedback(r, completed, timed_out, deadline_s=deadline if math.isfinite(deadline) else math.nan))
        picks.append(chosen)
    return picks


def count(picks: list[list[int]], nodes) -> int:
    nodes = set(nodes)
    return sum(n in nodes for chosen in picks for n in chosen)


# -- random ---------------------------------------------------------------------------------------------
def test_random_is_seeded_and_explains_itself():
    a, b = RandomSelector(per_round=3, seed=5), RandomSelector(per_round=3, seed=5)
    nodes = [10, 20, 30, 40, 50]
    assert a.select(nodes, 1) == b.select(nodes, 1)
    d = a.last_decision
    assert d is not None and len(d.selected) == 3 and len(d.skipped) == 2
    assert all(v.startswith("random") for v in {**d.reasons, **d.skipped}.values())
    with pytest.raises(SelectionError):
        RandomSelector(per_round=3, min_available=6).select(nodes, 1)


# -- oort ----------------------------------------------------------------------------------------------
def test_slow_miners_are_penalised():
    fast, slow = range(0, 10), range(10, 20)
    durations = {n: 1.0 for n in fast} | {n: 8.0 for n in slow}
    oort = OortSelector(5, OortConfig(epsilon=0.5, epsilon_min=0.0, fairness_rounds=0, pacer_step=0.0), seed=3)
    picks = drive(oort, durations, 60)
    later = picks[20:]
    assert count(later, fast) >= 4 * count(later, slow)
    random_picks = drive(RandomSelector(per_round=5, seed=3), durations, 60)[20:]
    assert count(random_picks, slow) > 3 * max(count(later, slow), 1)
    skipped_slow = [why for n, why in oort.last_decision.skipped.items() if n in slow]
    assert skipped_slow and all("speed" in why for why in skipped_slow)


def test_exploration_decays_to_its_floor():
    cfg = OortConfig(epsilon=0.9, epsilon_decay=0.8, epsilon_min=0.2, fairness_rounds=0)
    oort = OortSelector(10, cfg)
    eps = [oort.epsilon_at(r) for r in range(1, 40)]
    assert eps[0] == 0.9 and all(x >= y for x, y in zip(eps, eps[1:], strict=False)) and eps[-1] == 0.2
    explored = []
    for r in range(1, 31):
        drive(oort, {n: 1.0 for n in range(400)}, 1, first=r)
        explored.append(sum(why.startswith("explore") for why in oort.last_decision.reasons.values()))
    assert explored[0] == 10  # nothing known yet: every slot explores
    assert explored[1] == round(0.9 * 0.8 * 10)
    assert all(x >= y for x, y in zip(explored[1:], explored[2:], strict=False))
    assert explored[-1] == 2  # the floor: 20% of the slots keep exploring


def test_quarantine_after_repeated_failures_then_probation():
    cfg = OortConfig(quarantine_after=2, quarantine_rounds=3, probation_slots=1, probation_successes=2,
                     reputation_weight=1.0, epsilon=0.0, epsilon_min=0.0)
    nodes = {n: 1.0 for n in range(6)}
    oort = OortSelector(6, cfg)  # everyone would be selected every round unless quarantined
    failing = {1, 2, 6}  # rounds where miner 0 fails

    picks = drive(oort, nodes, 2, fails=lambda n, r: n == 0 and r in failing)
    assert all(0 in p for p in picks)
    picks = drive(oort, nodes, 3, first=3)  # rounds 3-5: sits out
    assert all(0 not in p for p in picks)
    assert oort.last_decision.skipped[0].startswith("quarantined")
    picks = drive(oort, nodes, 1, first=6, fails=lambda n, r: n == 0 and r in failing)  # back on probation, fails
    assert 0 in picks[0] and "probation" in oort.last_decision.reasons[0]
    picks = drive(oort, nodes, 6, first=7)  # second strike: twice as long (rounds 7-12)
    assert all(0 not in p for p in picks)
    picks = drive(oort, nodes, 2, first=13)  # probation again; two successes clear it
    assert all(0 in p for p in picks)
    assert not oort.on_probation(0, 15) and not oort.quarantined(0, 15)


def test_probation_slots_limit_returning_miners():
    cfg = OortConfig(quarantine_after=1, quarantine_rounds=2, probation_slots=1, probation_successes=1,
                     epsilon=0.0, epsilon_min=0.0)
    oort = OortSelector(4, cfg)
    nodes = {n: 1.0 for n in range(4)}
    drive(oort, nodes, 1, fails=lambda n, r: n in (0, 1))
    drive(oort, nodes, 2, first=2)
    picks = drive(oort, nodes, 1, first=4)  # both return at round 4, one probation slot
    assert len({0, 1} & set(picks[0])) == 1
    assert any(why.startswith("probation") for why in oort.last_decision.skipped.values())


def test_fairness_floor_holds_over_a_long_run():
    k_rounds = 10
    durations = {n: 1.0 for n in range(40)} | {n: 30.0 for n in range(40, 50)}  # 10 very slow miners
    oort = OortSelector(10, OortConfig(fairness_rounds=k_rounds, alpha=3.0, reputation_weight=1.0), seed=1)
    picks = drive(oort, durations, 300, deadline=10.0)
    last = {n: 0 for n in durations}
    for r, chosen in enumerate(picks, start=1):
        for n in chosen:
            assert r - last[n] <= k_rounds, f"miner {n} waited {r - last[n]} rounds"
            last[n] = r
    assert all(300 - last[n] < k_rounds for n in durations)
    assert count(picks, range(40, 50)) < 0.25 * count(picks, range(40))  # still penalised


def test_pacer_relaxes_the_preferred_round_time_when_utility_is_flat():
    oort = OortSelector(3, OortConfig(pacer_window=3, pacer_step=0.5))
    durations = {0: 1.0, 1: 2.0, 2: 3.0}
    drive(oort, durations, 5)
    before = oort.preferred_duration()
    drive(oort, durations, 1, first=6)  # 6 rounds of the same utility: flat
    assert oort.pacer_factor == 1.5 and oort.preferred_duration() == pytest.approx(1.5 * before)
    drive(oort, durations, 30, first=7)
    assert oort.pacer_factor == oort.config.pacer_max_factor  # bounded


def test_decision_to_dict_is_json():
    oort = OortSelector(2)
    drive(oort, {1: 1.0, 2: 2.0, 3: 3.0}, 3)
    row = json.loads(json.dumps(oort.last_decision.to_dict()))
    assert row["round"] == 3 and row["policy"] == "oort" and len(row["selected"]) == 2
    assert set(row["reasons"]) | set(row["skipped"]) == {"1", "2", "3"}


# -- wiring ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["random", "oort", "oort_reputation"])
def test_shipped_policies_build(name):
    cfg = OmegaConf.load(f"{CONF_DIR}/selection/{name}.yaml")
    if name == "random":
        assert isinstance(build_selector(cfg, 1), RandomSelector)
    else:
        sel = build_selector(cfg, 1)
        assert isinstance(sel, OortSelector) and sel.name == name
        assert (sel.config.reputation_weight > 0) == (name == "oort_reputation")


@pytest.mark.parametrize("cfg, message", [
    ({"name": "greedy"}, "selection.name"),
    ({"name": "oort", "per_round": 0}, "per_round"),
    ({"name": "oort", "per_round": 5, "oort": {"alpah": 2}}, "unknown keys"),
    ({"name": "oort", "per_round": 5, "oort": {"epsilon": 0.1, "epsilon_min": 0.5}}, "epsilon"),
])
def test_bad_selection_config_fails_clearly(cfg, message):
    with pytest.raises(SelectionConfigError, match=message):
        build_selector(cfg, 0)


def test_controller_applies_the_deadline_and_caps_slow_miners():
    config = NetworkConfig(name="t", mix={"good": 1.0}, deadline_s=10.0, train_time="measured",
                           profiles={"good": NetworkConfig().profiles["good"]})
    net = NetworkSim(config, 3, seed=0)
    ctl = SelectionController(RandomSelector(per_round=0), net, LocalWorkConfig(enabled=True, safety=0.9))
    nodes = [101, 102, 103]
    assert ctl.select(nodes, 1) == nodes and ctl.work_caps() == {}  # speeds unknown: no caps yet
    facts = [ReplyFacts(101, True, 1.0, 1000, 0.5, 100, 10), ReplyFacts(102, True, 40.0, 1000, 0.5, 100, 10)]
    on_time = ctl.arrive(1, facts)  # 103 never answered
    assert on_time == {101}
    ctl.feedback(1, on_time)
    extra = ctl.round_extra()
    assert extra["timeouts"] == 2 and extra["sim_round_s"] == 10.0
    stats = ctl.stats
    assert stats.get(102).timeouts == 1 and stats.get(103).drops == 1 and stats.get(101).completions == 1
    ctl.select(nodes, 2)
    caps = ctl.work_caps()
    per_step = stats.get(101).seconds_per_step
    assert 101 in caps and caps[101] * per_step <= 10.0 * 0.9
    assert 102 not in caps  # its speed was never measured (it timed out)


def test_controller_skips_disconnected_miners():
    from fl_server.network_sim import NetworkEvent

    config = NetworkConfig(name="t", mix={"good": 1.0}, events=(NetworkEvent(round=2, miner=0, action="disconnect"),))
    ctl = SelectionController(RandomSelector(per_round=0), NetworkSim(config, 2, 0))
    assert ctl.select([7, 9], 1) == [7, 9]
    assert ctl.select([7, 9], 2) == [9]
    assert ctl.decision.skipped[7].startswith("offline")


# -- a real Flower round with timeouts ------------------------------------------------------------------------
@pytest.mark.slow
def test_flower_round_completes_when_selected_miners_time_out(digits_root: Path, digits_cfg):
    """Real Flower simulation engine and ClientApp: 3 miners, one of them (by the seeded mix) on a
    device 10^6x slower (any real training time misses the deadline). It is selected every round, times out on the
    virtual clock, and every round still aggregates the two others."""
    import warnings

    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from aggregator.datasets import get_spec
    from aggregator.models import ModelSpec, build_model
    from fl_client.app import app as client_app
    from fl_server.data_prep import server_test_path
    from fl_server.evaluation import ServerEvaluator
    from fl_server.network_sim import build_network
    from fl_server.strategy import ModelMineStrategy

    ds = get_spec("digits")
    spec = ModelSpec("mlp", {"in_channels": ds.in_channels, "image_size": ds.image_size, "num_classes": ds.num_classes})
    initial = build_model(spec, seed=7)
    network = build_network({"name": "slow-one", "mix": {"good": 2, "poor": 1}, "deadline_s": 30.0,
                             "profiles": {"poor": {"compute_factor": [1e6, 1e6], "loss": 0.0}}}, 3, seed=7)
    assert network is not None
    slow_miner = network.base_profiles.index("poor")
    controller = SelectionController(RandomSelector(per_round=0, seed=7), network)
    strategy = ModelMineStrategy(selector=controller, min_replies=1)
    evaluator = ServerEvaluator(server_test_path(digits_root, "digits"), "digits", spec)
    train_config = ConfigRecord({
        "dataset": "digits", "partition-tag": digits_cfg.tag, "data-root": str(digits_root),
        "model-spec": spec.to_json(), "epochs": 1, "batch-size": 32, "lr": 0.05, "optimizer": "sgd",
        "momentum": 0.9, "weight-decay": 0.0, "seed": 7,
    })
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial.state_dict()), num_rounds=2, timeout=120,
                       train_config=train_config, evaluate_fn=evaluator)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=3,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": 1, "include_dashboard": False}})

    records = strategy.records
    assert [r.round for r in records] == [1, 2]
    for r in records:
        assert r.selected == 3 and r.received == 2
        assert r.extra["timeouts"] == 1 and r.extra["sim_round_s"] == 30.0
    assert records[-1].extra["sim_clock_s"] == 60.0
    slow_node = next(n for n, m in network.index_nodes([]).items() if m == slow_miner)
    assert controller.stats.get(slow_node).timeouts == 2 and controller.stats.get(slow_node).completions == 0
    assert records[-1].accuracy > evaluator(0, ArrayRecord(initial.state_dict()))["accuracy"] + 0.2
    decisions = [d.to_dict() for d in controller.decisions]
    assert [d["round"] for d in decisions] == [1, 2] and all(len(d["selected"]) == 3 for d in decisions)


def test_selection_jsonl_appends_one_line_per_round(tmp_path):
    ctl = SelectionController(OortSelector(2))
    path = tmp_path / "selection.jsonl"
    for r in (1, 2, 3):
        chosen = ctl.select([4, 5, 6], r)
        ctl.arrive(r, [ReplyFacts(n, True, 1.0, 10, 0.5, 20, 2) for n in chosen])
        ctl.feedback(r, chosen)
        ctl.write_jsonl(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2, 3]
    assert all(len(row["selected"]) == 2 and len(row["skipped"]) == 1 for row in rows)


def test_overcommit_selects_more_and_cut_replies_are_not_failures():
    config = NetworkConfig(name="t", mix={"good": 1.0}, deadline_s=100.0)
    oort = OortSelector(4, OortConfig(quarantine_after=1), overcommit=1.5)
    ctl = SelectionController(oort, NetworkSim(config, 8, 0))
    chosen = ctl.select(list(range(8)), 1)
    assert len(chosen) == 6 and ctl.decision.quorum == 4
    facts = [ReplyFacts(n, True, float(n + 1), 100, 1.0, 10, 1) for n in chosen]
    on_time = ctl.arrive(1, facts)
    assert len(on_time) == 4
    ctl.feedback(1, on_time)
    slowest = sorted(chosen)[-2:]
    for n in slowest:
        rec = ctl.stats.get(n)
        assert rec.cuts == 1 and rec.consecutive_failures == 0 and not oort.quarantined(n, 2)
        assert rec.duration_s >= ctl.round_extra()["sim_round_s"]
    assert ctl.round_extra()["cut"] == 2
