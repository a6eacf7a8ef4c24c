"""Gas used by every external ModelMine function, plus amortized gas per miner per round.

Usage: ``python scripts/gas_report.py [--json PATH] [--backend embedded|anvil] [--miners 10 50]
[--finalize-voters 512]``

Rows: ``{"function", "gas"}`` for each external function (one representative call, steady state
where storage was already touched; direct miner actions are the batch functions with one entry), and
``{"function": "per_miner_per_round", "miners", "gas", ...}``: the four transactions of a relayed round
(openRound + commitBatch + propose + voteRevealBatch, which finalizes, reveals and settles) / miners,
averaged over rounds 2-4 of a task; ``first_round_gas`` is round 1 (every per-miner slot written for the
first time); ``separate_batches_gas`` uses separate vote and reveal batches. The ``finalize`` row is the
vote-window timeout path with ``--finalize-voters`` voters (adversarial, all-distinct accuracies) and the
``settle`` that follows. Gas is the receipt's gasUsed (21000 intrinsic and calldata included). The anvil
backend is much faster for the 512-voter row.
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

from aggregator import eip712  # noqa: E402
from contracts.chain import AnvilProcess, Chain, ChainConfig, TxResult  # noqa: E402
from contracts.client import ModelMineClient  # noqa: E402
from contracts.testing import Scenario, compressed_pubkey  # noqa: E402


def _row(rows: list[dict[str, Any]], function: str, res: TxResult, **extra: Any) -> None:
    rows.append({"function": function, "gas": res.gas_used, **extra})


def function_rows(chain: Chain) -> list[dict[str, Any]]:
    """One row per external state-changing function (steady state: round 2 of a task)."""
    rows: list[dict[str, Any]] = []
    owner = chain.funded_account()
    c = ModelMineClient.deploy(chain, owner)
    block = chain.w3.eth.get_block(c.from_block, full_transactions=True)
    receipt = chain.w3.eth.get_transaction_receipt(block["transactions"][-1]["hash"])
    rows.append({"function": "constructor", "gas": int(receipt["gasUsed"])})
    w = Scenario(c, 3)
    extra = chain.funded_account()
    _row(rows, "register", c.register_miner(extra, compressed_pubkey(extra)))
    relayed = chain.funded_account()
    deadline = chain.timestamp() + 3600
    msg = c.registration_message(relayed.address, compressed_pubkey(relayed), deadline)
    _row(rows, "registerFor", c.register_for(w.aggregator, relayed.address, compressed_pubkey(relayed), deadline,
                                             eip712.sign(c.domain, msg, relayed.key)))
    _row(rows, "addStake", c.add_stake(extra, 10**15))
    spec, nonce = w.spec(rounds=4, target_bps=9999, round_window_s=100, commit_window_s=100)
    task, res = c.publish_task(w.publisher, spec, 4 * 10**18)
    _row(rows, "publishTask", res)
    w.run_round(task)  # warm the per-miner slots

    # direct path, round 2: every miner sends its own signed messages
    rs = c.round_state(task)
    round_, attempt, support = int(rs["round"]), int(rs["attempt"]) + 1, keccak(b"s2")
    _row(rows, "openRound", c.open_round(w.aggregator, task, round_, attempt, support, [m.address for m in w.miners]),
         miners=3)
    subs, openings = w.submissions(task, round_, support, {m.address: 50 + i for i, m in enumerate(w.miners)},
                                   attempt=attempt)
    for m, (sub, _) in zip(w.miners, subs, strict=True):
        res = c.commit(m, task, round_, attempt, support, sub.ciphertextHash, sub.commitment)
    _row(rows, "commitBatch", res, miners=1, note="direct commit (the miner's own signed Submission)")
    model = keccak(b"m2")
    _row(rows, "propose", c.propose(w.aggregator, task, round_, attempt, model))
    plist = c.participants(task)
    _row(rows, "voteRevealBatch", c.vote(w.miners[0], task, round_, model, True, 9000, plist, attempt), miners=1,
         note="direct vote")
    c.vote(w.miners[1], task, round_, model, True, 9000, plist, attempt)
    _row(rows, "voteRevealBatch", c.vote(w.miners[2], task, round_, model, True, 9000, plist, attempt), miners=1,
         note="last direct vote: finalizes")
    m = w.miners[0]
    _row(rows, "revealBatch", c.reveal(m, task, round_, openings[m.address].score, openings[m.address].nonce, plist,
                                       attempt), miners=1, note="direct reveal")
    c.reveal(w.miners[1], task, round_, openings[w.miners[1].address].score, openings[w.miners[1].address].nonce,
             plist, attempt)
    m = w.miners[2]
    _row(rows, "revealBatch", c.reveal(m, task, round_, openings[m.address].score, openings[m.address].nonce, plist,
                                       attempt), miners=1, note="last direct reveal: settles 3 miners")

    # timeouts, round 3: one silent voter, one silent revealer
    round_, attempt, support = w.open(task)
    subs, openings = w.submissions(task, round_, support, {x.address: 70 for x in w.miners}, attempt=attempt)
    _row(rows, "commitBatch", c.relay_submissions(w.aggregator, task, round_, attempt, subs), miners=3)
    model = keccak(b"m3")
    c.propose(w.aggregator, task, round_, attempt, model)
    plist = c.participants(task)
    votes = w.votes(task, round_, model, {x.address: True for x in w.miners}, {x.address: 9000 for x in w.miners},
                    attempt=attempt)
    c.relay_votes(w.aggregator, task, round_, model, votes[:2], plist, attempt)
    chain.advance_time(101)
    _row(rows, "finalize", c.finalize(w.aggregator, task), note="after the vote window")
    c.relay_reveals(w.aggregator, task, round_, w.reveals(task, round_, openings, attempt=attempt)[:2], plist, attempt)
    chain.advance_time(101)
    _row(rows, "settle", c.settle(w.aggregator, task), note="3 participants, 1 slashed")
    round_, attempt, _ = w.open(task)
    chain.advance_time(202)
    _row(rows, "expire", c.expire(w.aggregator, task), note="no candidate in time")

    _row(rows, "revealTarget", c.reveal_target(w.publisher, task, 9999, nonce))
    task2 = w.publish(rounds=2)
    _row(rows, "cancelTask", c.cancel_task(w.publisher, task2))
    task3 = w.publish(rounds=2, deadline=chain.timestamp() + 50)
    chain.advance_time(51)
    _row(rows, "closeExpired", c.close_expired(w.publisher, task3))
    claim = c._tx(c.contract.functions.claim(), w.publisher)
    _row(rows, "claimRewards", c._tx(c.contract.functions.claimRewards([task]), w.miners[0]), tasks=1)
    _row(rows, "claim", claim)
    _row(rows, "requestUnstake", c.request_unstake(w.miners[0]))
    chain.advance_time(3601)
    _row(rows, "withdrawStake", c.withdraw_stake(w.miners[0], [task]), tasks=1, note="releases 1 task")
    _row(rows, "releaseTasks", c.release_tasks(w.aggregator, w.miners[1].address, [task]), tasks=1)
    _row(rows, "pause", c._tx(c.contract.functions.pause(), owner))
    _row(rows, "unpause", c._tx(c.contract.functions.unpause(), owner))
    _row(rows, "setTreasury", c._tx(c.contract.functions.setTreasury(owner.address), owner))
    _row(rows, "setNetworkParams", c._tx(c.contract.functions.setNetworkParams(100, 10**15, 500, 7200), owner))
    return rows


def batched_row(chain: Chain, n: int, rounds: int = 4) -> dict[str, Any]:
    """Amortized gas per miner per round with n miners, all actions relayed in batches: openRound +
    commitBatch + propose + voteRevealBatch (which finalizes, reveals and settles), rounds 2.. of a task."""
    c = ModelMineClient.deploy(chain, chain.funded_account())
    w = Scenario(c, n)
    task = w.publish(rounds=rounds + 1)
    task2 = w.publish(rounds=rounds + 1)
    combined = [w.run_round(task, combined=True) for _ in range(rounds)]
    separate = [w.run_round(task2) for _ in range(rounds)]
    steady = combined[1:]

    def mean(results: list, key: str) -> int:
        return round(sum(getattr(r, key).gas_used for r in results) / len(results))

    return {
        "function": "per_miner_per_round",
        "miners": n,
        "gas": round(sum(r.gas for r in steady) / len(steady) / n),
        "first_round_gas": round(combined[0].gas / n),
        "path": "openRound + commitBatch + propose + voteRevealBatch",
        "separate_batches_gas": round(sum(r.gas for r in separate[1:]) / len(separate[1:]) / n),
        "openRound": mean(steady, "open"),
        "commitBatch": mean(steady, "commit"),
        "propose": mean(steady, "propose"),
        "voteRevealBatch": mean(steady, "votes"),
    }


def finalize_row(chain: Chain, voters: int) -> dict[str, Any]:
    """Gas of ``finalize`` (the vote-window timeout path, called by anyone) with ``voters`` votes whose
    accuracies are all distinct and alternate low/high, and of the ``settle`` that follows."""
    c = ModelMineClient.deploy(chain, chain.funded_account())
    w = Scenario(c, voters + 1)
    task = w.publish(k=10**6)
    round_, attempt, support = w.open(task)
    subs, openings = w.submissions(task, round_, support, {m.address: 1000 + (i * 7919) % 5000
                                                           for i, m in enumerate(w.miners)}, attempt=attempt)
    for i in range(0, len(subs), 128):
        c.relay_submissions(w.aggregator, task, round_, attempt, subs[i:i + 128])
    model = keccak(b"512")
    c.propose(w.aggregator, task, round_, attempt, model)
    plist = c.participants(task)
    voting = w.miners[:voters]
    accuracy = {m.address: (10_000 - i) if i % 2 else i for i, m in enumerate(voting)}
    votes = w.votes(task, round_, model, {m.address: True for m in voting}, accuracy, voting, attempt)
    for i in range(0, voters, 128):
        c.relay_votes(w.aggregator, task, round_, model, votes[i:i + 128], plist, attempt)
    chain.advance_time(3601)
    fin = c.finalize(chain.funded_account(), task)
    reveals = w.reveals(task, round_, openings, voting, attempt)
    for i in range(0, voters, 128):
        c.relay_reveals(w.aggregator, task, round_, reveals[i:i + 128], plist, attempt)
    chain.advance_time(3601)
    settle = c.settle(chain.funded_account(), task, plist)
    return {"function": "finalize", "miners": voters + 1, "voters": voters, "gas": fin.gas_used,
            "settle_gas": settle.gas_used, "note": f"{voters} voters, 1 silent (timeout path); settle {settle.gas_used}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--backend", choices=["embedded", "anvil"], default="embedded")
    parser.add_argument("--miners", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--finalize-voters", type=int, default=512, help="voters of the finalize row (0: skip)")
    args = parser.parse_args(argv)

    anvil = None
    if args.backend == "anvil":
        anvil = AnvilProcess().start()
        chain = Chain(ChainConfig(backend="rpc", rpc_url=anvil.url, dev_chain=True))
    else:
        chain = Chain(ChainConfig(backend="embedded"))
    try:
        rows = function_rows(chain)
        rows += [batched_row(chain, n) for n in args.miners]
        if args.finalize_voters:
            rows.append(finalize_row(chain, args.finalize_voters))
    finally:
        if anvil is not None:
            anvil.stop()
    for r in rows:
        r["backend"] = args.backend
    print(f"{'function':<22} {'miners':>6} {'gas':>10}  note")
    for r in rows:
        note = r.get("note", "")
        if r["function"] == "per_miner_per_round":
            note = (f"open {r['openRound']} + commit {r['commitBatch']} + propose {r['propose']} + voteReveal "
                    f"{r['voteRevealBatch']} (per round); first round {r['first_round_gas']}/miner; separate vote and "
                    f"reveal batches {r['separate_batches_gas']}/miner")
        print(f"{r['function']:<22} {r.get('miners', ''):>6} {r['gas']:>10}  {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
