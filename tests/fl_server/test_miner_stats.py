"""The server's per-miner book: durations, bandwidth, failures, utility, reputation."""

from __future__ import annotations

import math

import pytest

from fl_server.miner_stats import MinerStats


def test_completions_update_duration_bandwidth_loss_and_speed():
    stats = MinerStats()
    stats.selected([5], 1)
    stats.completed(5, 1, duration_s=4.0, network_s=2.0, upload_bytes=1_000_000, train_loss=0.8, examples=500,
                    compute_s=2.0, steps=20)
    rec = stats.get(5)
    assert (rec.selections, rec.completions, rec.last_selected_round, rec.last_completed_round) == (1, 1, 1, 1)
    assert rec.duration_s == 4.0 and rec.bandwidth_bps == 500_000.0
    assert rec.seconds_per_step == pytest.approx(0.1)
    assert rec.statistical_utility == pytest.approx(400.0)
    stats.completed(5, 2, duration_s=2.0, network_s=1.0, upload_bytes=1_000_000, train_loss=0.4, examples=500)
    assert rec.duration_s == pytest.approx(3.0)  # smoothed
    assert rec.last_duration_s == 2.0 and rec.last_train_loss == 0.4


def test_timeouts_and_rejections_lower_reliability_and_count_in_a_row():
    stats = MinerStats()
    assert stats.get(1).reliability == 0.5  # newcomer
    stats.timed_out(1, 1, dropped=True)
    stats.timed_out(1, 2, dropped=False, deadline_s=10.0)
    stats.rejected(1, 3)
    rec = stats.get(1)
    assert (rec.timeouts, rec.drops, rec.rejections, rec.consecutive_failures) == (2, 1, 1, 3)
    assert rec.reliability == pytest.approx(1 / 5)
    assert rec.duration_s == 15.0  # a late reply took at least the deadline
    stats.completed(1, 4, duration_s=3.0)
    assert rec.consecutive_failures == 0


def test_unexplored_miner_has_no_utility_but_is_observed_after_a_timeout():
    stats = MinerStats()
    rec = stats.get(9)
    assert not rec.observed and rec.statistical_utility == 0.0
    stats.timed_out(9, 1, dropped=True)
    assert rec.observed and not rec.explored and math.isnan(rec.duration_s)


def test_chain_history_sets_reputation():
    stats = MinerStats()
    stats.chain_round(accepted=[1, 2], valid_reveals=[1, 2])
    stats.completed(1, 1, duration_s=1.0)
    stats.completed(1, 2, duration_s=1.0)
    stats.completed(2, 1, duration_s=1.0)
    before = stats.get(2).reputation
    stats.chain_faults(invalid_reveals=[2], slashed=[2])  # what a round's RevealInvalid/Slashed events name
    stats.chain_round(accepted=[1], valid_reveals=[1, 1])
    assert stats.get(2).slashes == 1 and stats.get(2).invalid_reveals == 1
    assert stats.get(1).valid_reveals == 3
    assert stats.get(2).reputation < before < stats.get(1).reputation


def test_rows_are_plain_dicts():
    stats = MinerStats()
    stats.completed(3, 1, duration_s=1.0)
    row = stats.rows()[0]
    assert row["node_id"] == 3 and "reputation" in row and "statistical_utility" in row
