"""The strategy's link to the contracts (rules v2): publish the task with its fixed round settings,
open each round attempt with the selected miners and the support hash, relay the miners' signed
commitments during the commit window, propose the candidate, relay signed votes and reveals, and read
back the outcome and the rewards.

Every miner action reaches the chain as a message signed by the miner (EIP-712) and relayed by the
aggregator account; the contract checks each signature, so the relay can neither forge nor alter, and
each miner may send its own message itself when the relay censors it. Time is moved forward (to close
a window early) only on dev chains; elsewhere the session waits for the chain's clock.
"""

from __future__ import annotations

import logging
import secrets
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from aggregator import eip712
from aggregator.protocol import ProtocolError, RoundPlan, SignedVote, VoteRequest
from contracts.chain import ChainError, TxResult
from contracts.client import ModelMineClient, Phase, TaskSpec, check_round_settings
from fl_server.registry import MinerRegistry
from fl_server.secure_aggregation import Accepted, ReplyRejected

log = logging.getLogger("modelmine.chain")


@dataclass
class RoundOutcome:
    """What the chain decided about one candidate block."""

    status: str  # finalized | rejected
    accepts: int
    votes: int
    median_accuracy_bps: int
    revealed: int
    miners_paid_wei: int
    gas_used: int
    # per-miner facts from the round's contract events (addresses), for on-chain reputation
    valid_reveals: tuple[str, ...] = ()
    invalid_reveals: tuple[str, ...] = ()
    slashed: tuple[str, ...] = ()

    def as_extra(self) -> dict[str, Any]:
        return {
            "chain_status": self.status,
            "votes_accept": f"{self.accepts}/{self.votes}",
            "vote_accuracy": self.median_accuracy_bps / 10_000,
            "reveals": self.revealed,
            "rewards_eth": self.miners_paid_wei / 1e18,
            "gas": self.gas_used,
        }


def _miners_of(logs: Sequence[tuple[str, Any]], event: str) -> tuple[str, ...]:
    """The ``miner`` of every ``event`` among ``logs`` (checksummed, in log order)."""
    return tuple(to_checksum_address(args["miner"]) for name, args in logs if name == event and "miner" in args)


@dataclass
class ChainSession:
    """One published task on a deployed ModelMine contract, driven round by round.

    ``round`` is the task's current round on chain, ``attempt`` the attempt this session last opened
    (0 before the first ``open_round``). ``publisher`` may be None when the publisher is another
    process (it then reveals the target itself)."""

    client: ModelMineClient
    task_id: int
    publisher: LocalAccount | None = field(repr=False)
    aggregator: LocalAccount = field(repr=False)
    target_bps: int
    target_nonce: bytes = field(repr=False)
    tolerance: float
    round: int = 1
    attempt: int = 0
    gas_this_round: int = 0

    @property
    def domain(self) -> eip712.Domain:
        return self.client.domain

    def registry(self, addresses: Iterable[str] | None = None) -> MinerRegistry:
        """Registered miners and their secure-aggregation keys, read from the chain's events: those
        of ``addresses`` only when given (one log query filtered on the indexed miner), else all."""
        registry = MinerRegistry()
        filters: dict[str, Any] = {}
        if addresses is not None:
            filters["miner"] = [to_checksum_address(a) for a in addresses]
            if not filters["miner"]:
                return registry
        for event in self.client.events("MinerRegistered", **filters):
            registry.register(event["miner"], bytes(event["publicKey"]))
        return registry

    def next_attempt(self) -> int:
        """The attempt the next :meth:`open_round` will use (the chain's last attempt + 1)."""
        return self.client.next_attempt(self.task_id)

    # ------------------------------------------------------------------ round life cycle

    def _wait_until(self, unix_time: int) -> None:
        """Let chain time pass ``unix_time``: time travel on a dev chain, else poll the chain's clock."""
        now = self.client.chain.timestamp()
        if now > unix_time:
            return
        if self.client.chain.cfg.is_dev:
            self.client.chain.advance_time(unix_time - now + 1)
            return
        while self.client.chain.timestamp() <= unix_time:
            time.sleep(max(self.client.chain.cfg.poll_interval_s, 1.0))

    def _end_stale_attempt(self) -> None:
        """An attempt left open by a failed server round (no candidate): let its propose window pass and
        expire it, so that the round can be retried under a new attempt."""
        rs = self.client.round_state(self.task_id)
        if int(rs["phase"]) != Phase.COMMIT:
            return
        self._wait_until(int(rs["deadline"]))
        try:
            self.client.expire(self.aggregator, self.task_id)
        except ChainError as exc:  # someone else expired it meanwhile
            log.info("expire of task %d attempt %d: %s", self.task_id, rs["attempt"], exc)

    def open_round(self, plan: RoundPlan, selected: Sequence[str]) -> TxResult:
        """Open ``plan``'s (round, attempt) on chain with the selected miners' addresses and the support
        hash. The plan must carry the task's fixed settings (checked first, as miners will) and the
        chain's next attempt."""
        self._end_stale_attempt()
        settings = self.client.task(self.task_id)
        size = int(plan.support.size) if plan.support is not None else int(settings["k"])
        check_round_settings(settings, backend=plan.backend, bits=plan.bits, clip=plan.clip,
                             support_mode=plan.dgc.support, support_size=size)
        rs = self.client.round_state(self.task_id)
        if (plan.round, plan.attempt) != (int(rs["round"]), int(rs["attempt"]) + 1):
            raise ProtocolError(f"plan is for round {plan.round} attempt {plan.attempt}; the chain expects round "
                                f"{rs['round']} attempt {int(rs['attempt']) + 1}")
        tx = self.client.open_round(self.aggregator, self.task_id, plan.round, plan.attempt, plan.support_hash,
                                    list(selected))
        self.round, self.attempt = plan.round, plan.attempt
        self.gas_this_round = tx.gas_used
        return tx

    def commit(self, plan: RoundPlan, accepted: Sequence[Accepted]) -> TxResult | None:
        """Relay the accepted submissions' signed commitments (idempotent), then close the commit window
        (dev chain: time travel when some selected miner did not commit; elsewhere: wait for it), so that
        the key service can read the committed set and the candidate can be proposed."""
        tx = None
        subs = [(a.submission.message(plan.support_hash), a.submission.signature) for a in accepted
                if (a.submission.task_id, a.submission.round, a.submission.attempt) == (self.task_id, plan.round, plan.attempt)]
        if subs:
            tx = self.client.relay_submissions(self.aggregator, self.task_id, plan.round, plan.attempt, subs)
            self.gas_this_round += tx.gas_used
        rs = self.client.round_state(self.task_id)
        if int(rs["participants"]) < int(rs["selected"]):
            self._wait_until(int(rs["commitDeadline"]))
        return tx

    def propose(self, plan: RoundPlan, accepted: Sequence[Accepted], model_hash: bytes) -> TxResult:
        """Post the candidate (model hash) of ``plan``'s attempt. The participants are whoever committed
        in the window (``accepted`` is relayed again first: a no-op when :meth:`commit` already ran)."""
        rs = self.client.round_state(self.task_id)
        if int(rs["phase"]) == Phase.COMMIT and int(rs["participants"]) < len(accepted):
            self.commit(plan, accepted)
        tx = self.client.propose(self.aggregator, self.task_id, plan.round, plan.attempt, model_hash)
        self.gas_this_round += tx.gas_used
        return tx

    def participants(self) -> list[tuple[str, bytes]]:
        """The current attempt's (miner, commitment) list in commit order (from the chain)."""
        return self.client.participants(self.task_id)

    def vote_request(self, model_hash: bytes, task_key: str) -> VoteRequest:
        return VoteRequest(self.task_id, self.round, model_hash, self.domain, self.tolerance, task_key, self.attempt)

    def check_vote(self, signed: SignedVote, expected_address: str, model_hash: bytes) -> None:
        """A vote must be for this task, round, attempt and candidate, signed by the node's bound miner."""
        vote = signed.vote
        if (vote.taskId, vote.round, vote.attempt, bytes(vote.modelHash)) != (
                self.task_id, self.round, self.attempt, model_hash):
            raise ReplyRejected(f"vote of {expected_address} is for another task, round, attempt or model")
        try:
            eip712.verify(self.domain, vote, signed.vote_signature, expected_address)
            if signed.reveal is not None:
                if signed.reveal.attempt != self.attempt:
                    raise eip712.SignatureError("reveal is for another attempt")
                eip712.verify(self.domain, signed.reveal, signed.reveal_signature, expected_address)
        except eip712.SignatureError as exc:
            raise ReplyRejected(f"vote of {expected_address}: {exc}") from exc

    def relay(
        self, model_hash: bytes, votes: list[SignedVote], participants: list[tuple[str, bytes]], propose_gas: int
    ) -> RoundOutcome:
        """Relay votes and reveals in one transaction; when some participant stayed silent, let the
        windows pass (time travel on a dev chain, waiting elsewhere) and finalize / settle."""
        participants = self.participants()  # the chain's list: whoever committed in the window
        members = {m for m, _ in participants}
        votes = [v for v in votes if v.address in members]
        order = {m: i for i, (m, _) in enumerate(participants)}
        votes.sort(key=lambda v: order[v.address])
        vote_items = [(v.vote, v.vote_signature) for v in votes]
        reveal_items = [(v.reveal, v.reveal_signature) for v in votes if v.reveal is not None]
        tx = self.client.relay_votes_and_reveals(
            self.aggregator, self.task_id, self.round, model_hash, vote_items, reveal_items, participants, self.attempt
        )
        gas = self.gas_this_round + tx.gas_used
        logs = list(tx.events)  # every event of the round's transactions, in order

        def happened(event: str) -> bool:
            return any(name == event for name, _ in logs)

        if not happened("RoundFinalized") and not happened("RoundRejected"):
            self._wait_until(int(self.client.round_state(self.task_id)["deadline"]))
            fin = self.client.finalize(self.aggregator, self.task_id)
            gas += fin.gas_used
            logs += fin.events
            if happened("RoundFinalized") and reveal_items:
                rev = self.client.relay_reveals(self.aggregator, self.task_id, self.round, reveal_items, participants,
                                                self.attempt)
                gas += rev.gas_used
                logs += rev.events
                tx = rev
        if happened("RoundFinalized") and not happened("RoundSettled"):
            self._wait_until(int(self.client.round_state(self.task_id)["deadline"]))
            settle = self.client.settle(self.aggregator, self.task_id, participants)
            gas += settle.gas_used
            logs += settle.events
            tx = settle
        state = self.client.round_state(self.task_id)
        finalized = happened("RoundFinalized")
        paid = 0
        for name, args in tx.events:
            if name == "RoundSettled":
                paid = int(args["minersPaid"]) + int(args["votersPaid"])
        accuracies = [v.vote.accuracyBps for v in votes] or [0]
        outcome = RoundOutcome(
            status="finalized" if finalized else "rejected",
            accepts=sum(v.vote.accept for v in votes),
            votes=len(votes),
            median_accuracy_bps=int(statistics.median_low(accuracies)),
            revealed=len(reveal_items) if finalized else 0,
            miners_paid_wei=paid,
            gas_used=gas,
            valid_reveals=_miners_of(logs, "Revealed"),
            invalid_reveals=_miners_of(logs, "RevealInvalid"),
            slashed=_miners_of(logs, "Slashed"),
        )
        self.round = int(state["round"])
        return outcome

    def finish(self, miners: Sequence[str]) -> dict[str, Any]:
        """Reveal the hidden target (when this session is the publisher), pull the aggregator's share, and
        report what miners are owed."""
        summary: dict[str, Any] = {"task_id": self.task_id, "contract": self.client.address}
        if self.publisher is not None:
            try:
                self.client.reveal_target(self.publisher, self.task_id, self.target_bps, self.target_nonce)
            except ChainError as exc:
                log.warning("target reveal failed: %s", exc)
        task = self.client.task(self.task_id)
        summary.update(
            finalized_rounds=int(task["finalizedRounds"]),
            target_accuracy=self.target_bps / 10_000,
            best_vote_accuracy=int(task["bestAccuracyBps"]) / 10_000,
            task_status=int(task["status"]),
        )
        owed = {m: self.client.pending_rewards(self.task_id, m) for m in miners}
        summary["miner_rewards_eth"] = {m: w / 1e18 for m, w in owed.items()}
        summary["miner_rewards_total_eth"] = sum(owed.values()) / 1e18
        try:
            summary["aggregator_claimed_eth"] = self.client.claim(self.aggregator) / 1e18
        except ChainError:
            summary["aggregator_claimed_eth"] = 0.0
        return summary


def _role_account(chain_cfg: Any, client: ModelMineClient, role: str) -> LocalAccount:
    """A role's key from the chain config (file or env var); on a dev chain a generated funded account."""
    account = client.chain.cfg.role_account(role)
    if account is not None:
        return account
    if not client.chain.cfg.is_dev:
        raise ChainError(f"chain.{role}_key_file or chain.{role}_key_env must name the {role}'s funded key "
                         f"on {client.chain.url} (generated accounts exist on dev chains only)")
    return client.chain.funded_account()


def open_session(
    cfg: Any,
    *,
    model_hash: bytes,
    publisher_key: bytes,
    aggregator_key: bytes,
    rounds: int,
    dataset: str,
    miner_folders: Sequence[Path] = (),
    target_bps: int,
    tolerance: float,
    support_k: int = 1 << 20,
    bits: int | None = None,
    clip: float = 0.5,
    secagg_backend: str = "masked",
    support_mode: str = "shared",
    threshold: int = 2,
) -> ChainSession:
    """Deploy (or attach to) the contract per ``cfg`` (conf/chain) and publish the task with its reward
    escrow, hidden target and fixed round settings (``support_k`` caps the support size; bits, clip,
    backend, support mode and threshold t are what every round must use). Publisher and aggregator keys
    come from ``chain.publisher_key_file/env`` and ``chain.aggregator_key_file/env`` (generated funded
    accounts on dev chains). ``miner_folders`` is ignored: miners register themselves."""
    client = ModelMineClient.from_config(cfg)
    if client is None:
        raise ProtocolError("chain backend 'none' has no session")
    chain = client.chain
    conf = chain.cfg
    publisher, aggregator = _role_account(cfg, client, "publisher"), _role_account(cfg, client, "aggregator")
    nonce = secrets.token_bytes(32)
    spec = TaskSpec(
        model_hash=model_hash,
        publisher_key=publisher_key,
        aggregator_key=aggregator_key,
        aggregator=aggregator.address,
        rounds=rounds,
        deadline=chain.timestamp() + int(conf.task_duration_s),
        target_bps=target_bps,
        target_nonce=nonce,
        dataset_type=dataset,
        round_window_s=int(conf.round_window_s),
        commit_window_s=int(conf.commit_window_s),
        aggregator_share_bps=int(conf.aggregator_share_bps),
        voter_share_bps=int(conf.voter_share_bps),
        quorum_bps=int(conf.quorum_bps),
        quant_bits=int(conf.quant_bits if bits is None else bits),
        k=int(support_k),
        clip=float(clip),
        secagg_backend=secagg_backend,
        support_mode=support_mode,
        threshold=max(2, int(threshold)),
    )
    task_id, _ = client.publish_task(publisher, spec, int(conf.reward_pool_wei))
    return ChainSession(client, task_id, publisher, aggregator, target_bps, nonce, tolerance)
