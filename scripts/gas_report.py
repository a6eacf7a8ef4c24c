"""Gas used by every external ModelMine function, plus amortized gas per miner per round.

Usage: ``python scripts/gas_report.py [--json PATH] [--backend embedded|anvil] [--miners 10 50]``

Rows: ``{"function", "gas"}`` for each external function (one representative call, steady state
where storage was already touched), and ``{"function": "per_miner_per_round", "miners", "gas", ...}``:
(propose with all signed submissions + voteRevealBatch that finalizes, reveals and settles) / miners,
averaged over rounds 2-4 of a task; ``first_round_gas`` is round 1 (every slot written for the first
time); ``separate_batches_gas`` is the same with separate voteBatch and revealBatch transactions
(``propose``, ``voteBatch``, ``revealBatch``: their gas per round). Gas is the receipt's gasUsed
(21000 intrinsic and calldata included).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eth_utils import keccak  # noqa: E402

from aggregator import commitments  # noqa: E402
from contracts.chain import AnvilProcess, Chain, ChainConfig, TxResult  # noqa: E402
from contracts.client import ModelMineClient  # noqa: E402
from contracts.testing import Scenario, compressed_pubkey  # noqa: E402


def _row(rows: list[dict[str, Any]], function: str, res: TxResult, **extra: Any) -> None:
    rows.append({"function": function, "gas": res.gas_used, **extra})


def function_rows(chain: Chain) -> list[dict[str, Any]]:
    """One row per external state-changing function."""
    rows: list[dict[str, Any]] = []
    owner = chain.funded_account()
    c = ModelMineClient.deploy(chain, owner)
    block = chain.w3.eth.get_block(c.from_block, full_transactions=True)
    receipt = chain.w3.eth.get_transaction_receipt(block["transactions"][-1]["hash"])
    rows.append({"function": "constructor", "gas": int(receipt["gasUsed"])})
    w = Scenario(c, 3)
    extra = chain.funded_account()
    _row(rows, "register", c.register_miner(extra, compressed_pubkey(extra)))
    _row(rows, "addStake", c.add_stake(extra, 10**15))
    spec, nonce = w.spec(rounds=4, target_bps=9999, round_window_s=100)
    task, res = c.publish_task(w.publisher, spec, 4 * 10**18)
    _row(rows, "publishTask", res)
    w.run_round(task, 1)  # warm the per-miner slots

    support, model = keccak(b"s2"), keccak(b"m2")
    # direct path, round 2
    openings = {}
    for i, m in enumerate(w.miners):
        op = commitments.Opening(50 + i, commitments.new_nonce())
        openings[m.address] = op
        res = c.commit(m, task, 2, support, keccak(b"ct"), commitments.commitment(op.score, op.nonce, task, 2, m.address))
    _row(rows, "commit", res)
    _row(rows, "propose", c.propose(w.aggregator, task, 2, model, support, 100), note="no relayed submissions")
    plist = c.participants(task)
    res = c.vote(w.miners[0], task, 2, model, True, 9000, plist)
    _row(rows, "vote", res)
    c.vote(w.miners[1], task, 2, model, True, 9000, plist)
    _row(rows, "vote", c.vote(w.miners[2], task, 2, model, True, 9000, plist), note="last vote: finalizes")
    m = w.miners[0]
    _row(rows, "reveal", c.reveal(m, task, 2, openings[m.address].score, openings[m.address].nonce, plist))
    c.reveal(w.miners[1], task, 2, openings[w.miners[1].address].score, openings[w.miners[1].address].nonce, plist)
    m = w.miners[2]
    _row(rows, "reveal", c.reveal(m, task, 2, openings[m.address].score, openings[m.address].nonce, plist),
         note="last reveal: settles 3 miners")

    # relayed path with windows, round 3
    support, model = keccak(b"s3"), keccak(b"m3")
    subs, openings = w.submissions(task, 3, support, {x.address: 70 for x in w.miners})
    _row(rows, "commitBatch", c.relay_submissions(w.aggregator, task, 3, support, subs[:2]), miners=2)
    c.propose(w.aggregator, task, 3, model, support, 100, subs[2:])
    plist = c.participants(task)
    votes = w.votes(task, 3, model, {x.address: True for x in w.miners}, {x.address: 9000 for x in w.miners})
    _row(rows, "voteBatch", c.relay_votes(w.aggregator, task, 3, model, votes[:2], plist), miners=2)
    chain.advance_time(101)
    _row(rows, "finalize", c.finalize(w.aggregator, task))
    _row(rows, "revealBatch", c.relay_reveals(w.aggregator, task, 3, w.reveals(task, 3, openings)[:2], plist), miners=2)
    chain.advance_time(101)
    _row(rows, "settle", c.settle(w.aggregator, task), note="3 participants, 1 slashed")

    _row(rows, "revealTarget", c.reveal_target(w.publisher, task, 9999, nonce))
    task2 = w.publish(rounds=2)
    _row(rows, "cancelTask", c.cancel_task(w.publisher, task2))
    task3 = w.publish(rounds=2, deadline=chain.timestamp() + 50)
    chain.advance_time(51)
    _row(rows, "closeExpired", c.close_expired(w.publisher, task3))
    claim = c._tx(c.contract.functions.claim(), w.publisher)
    _row(rows, "claimRewards", c._tx(c.contract.functions.claimRewards([task]), w.miners[0]), tasks=1)
    _row(rows, "claim", claim)
    _row(rows, "requestUnstake", c.request_unstake(extra))
    chain.advance_time(3601)
    _row(rows, "withdrawStake", c.withdraw_stake(extra))
    _row(rows, "pause", c._tx(c.contract.functions.pause(), owner))
    _row(rows, "unpause", c._tx(c.contract.functions.unpause(), owner))
    _row(rows, "setTreasury", c._tx(c.contract.functions.setTreasury(owner.address), owner))
    _row(rows, "setNetworkParams", c._tx(c.contract.functions.setNetworkParams(100, 10**15, 500, 7200), owner))
    return rows


def batched_row(chain: Chain, n: int, rounds: int = 4) -> dict[str, Any]:
    """Amortized gas per miner per round with n miners, all actions relayed in batches."""
    c = ModelMineClient.deploy(chain, chain.funded_account())
    w = Scenario(c, n)
    task = w.publish(rounds=rounds + 1)
    task2 = w.publish(rounds=rounds + 1)
    results = [w.run_round(task, r) for r in range(1, rounds + 1)]
    steady = results[1:]
    combined = [w.run_round(task2, r, combined=True) for r in range(1, rounds + 1)]
    def mean(key: str) -> int:
        return round(sum(getattr(r, key).gas_used for r in steady) / len(steady))

    return {
        "function": "per_miner_per_round",
        "miners": n,
        "gas": round(sum(r.gas for r in combined[1:]) / len(combined[1:]) / n),
        "first_round_gas": round(combined[0].gas / n),
        "path": "propose + voteRevealBatch",
        "separate_batches_gas": round(sum(r.gas for r in steady) / len(steady) / n),
        "voteRevealBatch": round(sum(r.votes.gas_used for r in combined[1:]) / len(combined[1:])),
        "propose": mean("propose"),
        "voteBatch": mean("votes"),
        "revealBatch": mean("reveals"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--backend", choices=["embedded", "anvil"], default="embedded")
    parser.add_argument("--miners", type=int, nargs="+", default=[10, 50])
    args = parser.parse_args(argv)

    anvil = None
    if args.backend == "anvil":
        anvil = AnvilProcess().start()
        chain = Chain(ChainConfig(backend="rpc", rpc_url=anvil.url))
    else:
        chain = Chain(ChainConfig(backend="embedded"))
    try:
        rows = function_rows(chain)
        rows += [batched_row(chain, n) for n in args.miners]
    finally:
        if anvil is not None:
            anvil.stop()
    for r in rows:
        r["backend"] = args.backend
    print(f"{'function':<22} {'miners':>6} {'gas':>10}  note")
    for r in rows:
        note = r.get("note", "")
        if r["function"] == "per_miner_per_round":
            note = (f"propose+voteRevealBatch; first round {r['first_round_gas']}; separate vote/reveal "
                    f"batches {r['separate_batches_gas']}")
        print(f"{r['function']:<22} {r.get('miners', ''):>6} {r['gas']:>10}  {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
