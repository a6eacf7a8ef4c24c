"""Invariant test: a long, seeded random schedule of publish, open, commit (relayed and direct),
propose, vote, reveal (some wrong), finalize, settle, expire, cancel, close, claim, unstake and withdraw
across several tasks and miners. After every action:

* the contract's balance equals escrow (pool - released, per task) + owed address balances + miners'
  pending rewards + stakes, to the wei (so nothing is paid twice and nothing is lost);
* an honest miner (commits when selected, votes accept and reveals as soon as it can) is never slashed,
  and every settled round it took part in pays it something;
* withdrawing stake never succeeds while the miner has an open round.

SCHEDULE_STEPS actions over TASKS concurrent tasks (re-published when they end) and MINERS miners.
"""

from __future__ import annotations

import os
import random

import pytest
from eth_utils import keccak

from aggregator import commitments
from contracts.chain import ChainError, ContractRevertError
from contracts.client import ModelMineClient, Phase, TaskStatus
from contracts.testing import Scenario, compressed_pubkey

# 120 by default (~1.5 min on anvil); MODELMINE_INVARIANT_STEPS=2000 for a longer soak.
SCHEDULE_STEPS = int(os.environ.get("MODELMINE_INVARIANT_STEPS", "120"))
TASKS = 2
MINERS = 6
HONEST = 3  # miners 0..2 follow the protocol; 3..5 behave randomly
# anvil stamps blocks with wall-clock time: an action is only tried while its window has this many
# seconds left, so a slow machine never sees a window close between the check and the transaction.
MARGIN_S = 30


class World:
    def __init__(self, client: ModelMineClient, seed: int) -> None:
        self.rng = random.Random(seed)
        self.c = client
        self.w = Scenario(client, MINERS)
        self.honest = {m.address for m in self.w.miners[:HONEST]}
        self.tasks: list[int] = []
        self.openings: dict[tuple[int, int, str], commitments.Opening] = {}
        self.unbonding: set[str] = set()
        self.treasury = client.chain.call(client.contract.functions.treasury())
        self.accounts = {self.w.publisher.address, self.w.aggregator.address, self.treasury,
                         *(m.address for m in self.w.miners)}
        self.miner_addresses = {m.address for m in self.w.miners}  # every miner ever (accounting)
        self.committers: set[tuple[int, str]] = set()  # (task, miner) of every commit tried
        self.settled_rounds = 0
        self.actions: dict[str, int] = {}
        self.selected: dict[int, set[str]] = {}
        self._settled_participants: list[tuple[str, bytes]] = []
        self._pending_before: dict[str, int] = {}

    # ---------------------------------------------------------------- invariants
    def check(self) -> None:
        c = self.c
        escrow = sum(c.escrow(t) for t in self.tasks)
        owed = sum(c.owed(a) for a in self.accounts)
        # Only miners that committed in a task can hold rewards pending there. Wei credited to anyone
        # else would be missing from this sum and break the equality, so the narrowing hides nothing.
        pending = sum(c.pending_rewards(t, m) for t, m in self.committers)
        stakes = sum(int(c.miner(m)["stake"]) for m in self.miner_addresses)
        assert c.chain.balance(c.address) == escrow + owed + pending + stakes

    def on_tx(self, res) -> None:  # noqa: ANN001
        for e in res.all("Slashed"):
            assert e["miner"] not in self.honest, f"honest miner slashed: {e}"
        settled = res.all("RoundSettled")
        if settled:
            self.settled_rounds += 1
            task = settled[0]["taskId"]
            for m, _ in self._settled_participants:
                if m in self.honest:
                    assert self.c.pending_rewards(task, m) > self._pending_before.get(m, 0), "honest miner unpaid"

    # ---------------------------------------------------------------- actions
    def tx(self, fn, *args, **kw):  # noqa: ANN001, ANN201
        rs_task = kw.pop("task", None)
        self._settled_participants, self._pending_before = [], {}
        if rs_task is not None:
            self._settled_participants = self._participants(rs_task)
            self._pending_before = {m: self.c.pending_rewards(rs_task, m) for m, _ in self._settled_participants}
        res = fn(*args, **kw)
        self.on_tx(res)
        return res

    def _participants(self, task: int) -> list[tuple[str, bytes]]:
        rs = self.c.round_state(task)
        return self.c.participants(task) if int(rs["phase"]) in (Phase.VOTING, Phase.REVEALING) else []

    def publish(self) -> None:
        task = self.w.publish(reward_wei=self.rng.choice([10**18, 10**18 + 13, 3 * 10**17 + 1]),
                              rounds=self.rng.randint(1, 3), round_window_s=600, commit_window_s=600)
        self.tasks.append(task)

    def step(self) -> None:
        c, rng = self.c, self.rng
        active = [t for t in self.tasks if c.task(t)["status"] == TaskStatus.ACTIVE
                  or c.round_state(t)["phase"] != Phase.IDLE]
        if len(active) < TASKS:
            self.publish()
            self.actions["publish"] = self.actions.get("publish", 0) + 1
            return
        roll = rng.random()
        if roll < 0.08:
            return self.side_action()
        task = rng.choice(active)
        rs = c.round_state(task)
        phase = int(rs["phase"])
        name = {Phase.IDLE: self.idle, Phase.COMMIT: self.commit, Phase.VOTING: self.voting,
                Phase.REVEALING: self.revealing}[phase](task, rs)
        self.actions[name] = self.actions.get(name, 0) + 1

    def idle(self, task: int, rs: dict) -> str:
        c, rng, w = self.c, self.rng, self.w
        if rng.random() < 0.07:
            c.cancel_task(w.publisher, task)
            return "cancel"
        if c.chain.timestamp() > int(c.task(task)["deadline"]):
            c.close_expired(w.aggregator, task)
            return "close"
        eligible = [m for m in w.miners if m.address not in self.unbonding]
        chosen = rng.sample(eligible, k=rng.randint(2, len(eligible)))
        w.open(task, chosen)
        self.selected[task] = {m.address for m in chosen}
        return "open"

    def commit(self, task: int, rs: dict) -> str:
        c, rng, w = self.c, self.rng, self.w
        round_, attempt = int(rs["round"]), int(rs["attempt"])
        now = c.chain.timestamp()
        if self.within(rs["commitDeadline"]) and rng.random() < 0.75:
            selected = [m for m in w.miners if self._is_selected(task, m.address)]
            todo = [m for m in selected if c.miner_round(task, m.address)["attempt"] != attempt]
            batch = [m for m in todo if m.address in self.honest or rng.random() < 0.6]
            if not batch:
                return "commit-none"
            scores = {m.address: rng.randint(1, 5000) for m in batch}
            subs, openings = w.submissions(task, round_, rs["supportHash"], scores, batch, attempt)
            for m in batch:
                self.openings[(task, attempt, m.address)] = openings[m.address]
                self.committers.add((task, m.address))
            if rng.random() < 0.5:
                self.tx(c.relay_submissions, w.aggregator, task, round_, attempt, subs)
            else:
                for m, (msg, _) in zip(batch, subs, strict=True):
                    try:
                        self.tx(c.commit, m, task, round_, attempt, rs["supportHash"], msg.ciphertextHash, msg.commitment)
                    except ChainError:
                        # a random miner may have unbonded or fallen under the stake since it was selected:
                        # its commit is skipped. An honest miner's never is.
                        if m.address in self.honest:
                            raise
            return "commit"
        if int(rs["participants"]) >= 2 and (now > int(rs["commitDeadline"]) or rs["participants"] == rs["selected"]) \
                and self.within(rs["deadline"]) and rng.random() < 0.85:
            self.tx(c.propose, w.aggregator, task, round_, attempt, keccak(f"m{task}.{attempt}".encode()))
            self.honest_votes(task)
            return "propose"
        c.chain.advance_time(max(0, int(rs["deadline"]) - now) + 1)
        self.tx(c.expire, w.miners[-1], task)
        return "expire"

    def within(self, deadline: int) -> bool:
        """True while ``deadline`` is at least MARGIN_S seconds away in chain time."""
        return self.c.chain.timestamp() + MARGIN_S <= int(deadline)

    def _is_selected(self, task: int, address: str) -> bool:
        return address in self.selected.get(task, ())

    def honest_votes(self, task: int) -> None:
        c, w = self.c, self.w
        rs = c.round_state(task)
        plist = c.participants(task)
        mine = [m for m in w.miners if m.address in self.honest and m.address in dict(plist)]
        if not mine:
            return
        votes = w.votes(task, int(rs["round"]), rs["modelHash"], {m.address: True for m in mine},
                        {m.address: 9000 for m in mine}, mine, int(rs["attempt"]))
        res = self.tx(c.relay_votes, w.aggregator, task, int(rs["round"]), rs["modelHash"], votes, plist,
                      int(rs["attempt"]), task=task)
        if res.all("RoundFinalized"):
            self.honest_reveals(task)

    def honest_reveals(self, task: int) -> None:
        c, w = self.c, self.w
        rs = c.round_state(task)
        if int(rs["phase"]) != Phase.REVEALING:
            return
        plist = c.participants(task)
        mine = [m for m in w.miners if m.address in self.honest and m.address in dict(plist)
                and not c.miner_round(task, m.address)["flags"] & 4]
        if mine:
            openings = {m.address: self.openings[(task, int(rs["attempt"]), m.address)] for m in mine}
            self.tx(c.relay_reveals, w.aggregator, task, int(rs["round"]),
                    w.reveals(task, int(rs["round"]), openings, mine, int(rs["attempt"])), plist, int(rs["attempt"]),
                    task=task)

    def voting(self, task: int, rs: dict) -> str:
        c, rng, w = self.c, self.rng, self.w
        plist = c.participants(task)
        others = [m for m in w.miners if m.address not in self.honest and m.address in dict(plist)]
        voted = c.round_state(task)["votes"]
        if others and voted < len(plist) and rng.random() < 0.6 and self.within(rs["deadline"]):
            m = rng.choice(others)
            try:
                res = self.tx(c.vote, m, task, int(rs["round"]), rs["modelHash"], rng.random() < 0.5,
                              rng.randint(0, 10_000), plist, int(rs["attempt"]), task=task)
            except ContractRevertError as exc:
                assert exc.name == "AlreadyVoted"
                return "vote-again"
            if res.all("RoundFinalized"):
                self.honest_reveals(task)
            return "vote"
        c.chain.advance_time(max(0, int(rs["deadline"]) - c.chain.timestamp()) + 1)
        res = self.tx(c.finalize, w.aggregator, task, task=task)
        if res.all("RoundFinalized"):
            self.honest_reveals(task)
        return "finalize"

    def revealing(self, task: int, rs: dict) -> str:
        c, rng, w = self.c, self.rng, self.w
        self.honest_reveals(task)
        rs = c.round_state(task)
        if int(rs["phase"]) != Phase.REVEALING:
            return "reveal-honest"
        plist = c.participants(task)
        attempt = int(rs["attempt"])
        others = [m for m in w.miners if m.address not in self.honest and m.address in dict(plist)
                  and not c.miner_round(task, m.address)["flags"] & 12]
        if others and rng.random() < 0.6 and self.within(rs["deadline"]):
            m = rng.choice(others)
            op = self.openings[(task, attempt, m.address)]
            if rng.random() < 0.3:
                op = commitments.Opening(op.score + 1, op.nonce)  # a wrong opening: ignored
            self.tx(c.relay_reveals, w.aggregator, task, int(rs["round"]),
                    w.reveals(task, int(rs["round"]), {m.address: op}, [m], attempt), plist, attempt, task=task)
            return "reveal"
        c.chain.advance_time(max(0, int(rs["deadline"]) - c.chain.timestamp()) + 1)
        self.tx(c.settle, w.aggregator, task, plist, task=task)
        return "settle"

    def side_action(self) -> None:
        c, rng, w = self.c, self.rng, self.w
        kind = rng.choice(["claim", "claim", "unstake", "withdraw", "close"])
        if kind == "claim":
            acct = rng.choice([w.publisher, w.aggregator, *w.miners])
            if c.owed(acct.address, self.tasks) > 0:
                before = c.chain.balance(c.address)
                amount = c.claim(acct, self.tasks)
                assert c.chain.balance(c.address) == before - amount
                assert c.owed(acct.address, self.tasks) == 0
        elif kind == "unstake":
            m = rng.choice(w.miners[HONEST:])
            if m.address not in self.unbonding:
                c.request_unstake(m)
                self.unbonding.add(m.address)
        elif kind == "withdraw" and self.unbonding:
            address = rng.choice(sorted(self.unbonding))
            m = next(x for x in w.miners if x.address == address)
            c.chain.advance_time(3601)
            open_rounds = [t for t in self.tasks if c.miner_round(t, address)["attempt"] == c.round_state(t)["attempt"]
                           and c.round_state(t)["phase"] != Phase.IDLE]
            try:
                c.withdraw_stake(m, self.tasks)
                assert not open_rounds, "stake withdrawn while a round was open"
                self.unbonding.discard(address)
                w.miners.remove(m)
                fresh = c.chain.funded_account()  # keep the miner count: a new one registers
                c.register_miner(fresh, compressed_pubkey(fresh))
                w.miners.append(fresh)
                self.accounts.add(fresh.address)
                self.miner_addresses.add(fresh.address)
            except ContractRevertError as exc:
                assert exc.name == "OpenRounds" and open_rounds
        elif kind == "close":
            t = rng.choice(self.tasks)
            if c.task(t)["status"] == TaskStatus.ACTIVE and c.chain.timestamp() > int(c.task(t)["deadline"]):
                c.close_expired(w.aggregator, t)
        self.actions[kind] = self.actions.get(kind, 0) + 1


@pytest.mark.slow
def test_random_schedule_keeps_money_exact_and_honest_miners_whole(fast_client: ModelMineClient) -> None:
    """On anvil when it is installed (py-evm takes ~30 min for 300 steps; anvil a fraction of that)."""
    world = World(fast_client, seed=20261201)
    for _ in range(SCHEDULE_STEPS):
        world.step()
        world.check()
    # the schedule exercised every part of the protocol
    for name in ("publish", "open", "commit", "propose", "vote", "finalize", "reveal", "settle", "expire", "claim"):
        assert world.actions.get(name, 0) > 0, world.actions
    assert world.settled_rounds >= 5, world.actions
