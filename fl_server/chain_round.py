"""The strategy's link to the contracts: publish the task, propose candidate blocks with the miners'
signed commitments, relay signed votes and reveals, and read back the outcome and the rewards.

Every miner action reaches the chain as a message signed by the miner (EIP-712) and relayed by the
aggregator account; the contract checks each signature, so the relay can neither forge nor alter.
"""

from __future__ import annotations

import logging
import secrets
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from aggregator import eip712
from aggregator.protocol import ProtocolError, RoundPlan, SignedVote, VoteRequest
from contracts.chain import ChainError, TxResult
from contracts.client import ModelMineClient, TaskSpec
from fl_client.identity import load_identity
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

    def as_extra(self) -> dict[str, Any]:
        return {
            "chain_status": self.status,
            "votes_accept": f"{self.accepts}/{self.votes}",
            "vote_accuracy": self.median_accuracy_bps / 10_000,
            "reveals": self.revealed,
            "rewards_eth": self.miners_paid_wei / 1e18,
            "gas": self.gas_used,
        }


@dataclass
class ChainSession:
    """One published task on a deployed ModelMine contract, driven round by round."""

    client: ModelMineClient
    task_id: int
    publisher: LocalAccount = field(repr=False)
    aggregator: LocalAccount = field(repr=False)
    target_bps: int
    target_nonce: bytes = field(repr=False)
    tolerance: float
    round: int = 1  # the task's current round on chain

    @property
    def domain(self) -> eip712.Domain:
        return self.client.domain

    def registry(self) -> MinerRegistry:
        """Registered miners and their secure-aggregation keys, read from the chain's events."""
        registry = MinerRegistry()
        for event in self.client.events("MinerRegistered"):
            registry.register(event["miner"], bytes(event["publicKey"]))
        return registry

    def vote_request(self, model_hash: bytes, task_key: str) -> VoteRequest:
        return VoteRequest(self.task_id, self.round, model_hash, self.domain, self.tolerance, task_key)

    def propose(self, plan: RoundPlan, accepted: Sequence[Accepted], model_hash: bytes) -> TxResult:
        """Post the candidate block (round, model hash, support) with the signed commitments of I."""
        k = int(plan.support.size) if plan.support is not None else 0
        subs = [(a.submission.message(plan.support_hash), a.submission.signature) for a in accepted]
        return self.client.propose(self.aggregator, self.task_id, self.round, model_hash, plan.support_hash, k, subs)

    def check_vote(self, signed: SignedVote, expected_address: str, model_hash: bytes) -> None:
        """A vote must be for this task, round and candidate, signed by the node's bound miner."""
        vote = signed.vote
        if (vote.taskId, vote.round, bytes(vote.modelHash)) != (self.task_id, self.round, model_hash):
            raise ReplyRejected(f"vote of {expected_address} is for another task, round or model")
        try:
            eip712.verify(self.domain, vote, signed.vote_signature, expected_address)
            if signed.reveal is not None:
                eip712.verify(self.domain, signed.reveal, signed.reveal_signature, expected_address)
        except eip712.SignatureError as exc:
            raise ReplyRejected(f"vote of {expected_address}: {exc}") from exc

    def relay(
        self, model_hash: bytes, votes: list[SignedVote], participants: list[tuple[str, bytes]], propose_gas: int
    ) -> RoundOutcome:
        """Relay votes and reveals in one transaction; close the windows on a dev chain when some
        participant stayed silent (a production relayer would wait for the window instead)."""
        vote_items = [(v.vote, v.vote_signature) for v in votes]
        reveal_items = [(v.reveal, v.reveal_signature) for v in votes if v.reveal is not None]
        tx = self.client.relay_votes_and_reveals(
            self.aggregator, self.task_id, self.round, model_hash, vote_items, reveal_items, participants
        )
        gas = propose_gas + tx.gas_used
        names = {name for name, _ in tx.events}
        window = int(self.client.task(self.task_id)["roundWindow"])
        if "RoundFinalized" not in names and "RoundRejected" not in names:
            self.client.chain.advance_time(window + 1)
            fin = self.client.finalize(self.aggregator, self.task_id)
            gas += fin.gas_used
            names |= {name for name, _ in fin.events}
            if "RoundFinalized" in names and reveal_items:
                rev = self.client.relay_reveals(self.aggregator, self.task_id, self.round, reveal_items, participants)
                gas += rev.gas_used
                names |= {name for name, _ in rev.events}
                tx = rev
        if "RoundFinalized" in names and "RoundSettled" not in names:
            self.client.chain.advance_time(window + 1)
            settle = self.client.settle(self.aggregator, self.task_id, participants)
            gas += settle.gas_used
            tx = settle
        state = self.client.round_state(self.task_id)
        finalized = "RoundFinalized" in names
        paid = 0
        for name, args in tx.events:
            if name == "RoundSettled":
                paid = int(args["minersPaid"])
        accuracies = [v.vote.accuracyBps for v in votes] or [0]
        outcome = RoundOutcome(
            status="finalized" if finalized else "rejected",
            accepts=sum(v.vote.accept for v in votes),
            votes=len(votes),
            median_accuracy_bps=int(statistics.median(accuracies)),
            revealed=len(reveal_items) if finalized else 0,
            miners_paid_wei=paid,
            gas_used=gas,
        )
        if finalized:
            self.round = int(state["round"])
        return outcome

    def finish(self, miners: Sequence[str]) -> dict[str, Any]:
        """Reveal the hidden target, pull the aggregator's share, and report what miners are owed."""
        summary: dict[str, Any] = {"task_id": self.task_id, "contract": self.client.address}
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


def register_simulated_miners(client: ModelMineClient, folders: Sequence[Path], stake_wei: int) -> None:
    """Simulation set-up acting for each local miner: fund its address and register its
    secure-aggregation key with a stake, signed with the miner's own key from its folder.
    (Real miners register themselves; the server never reads miner keys.)"""
    registered = {to_checksum_address(e["miner"]) for e in client.events("MinerRegistered")}
    for folder in folders:
        identity = load_identity(folder)
        if identity.address in registered:
            continue
        account: LocalAccount = Account.from_key(identity.eth_key)
        client.chain.fund(account.address, stake_wei + 10**18)
        client.register_miner(account, identity.secagg_public, stake_wei)


def open_session(
    cfg: Any,
    *,
    model_hash: bytes,
    publisher_key: bytes,
    aggregator_key: bytes,
    rounds: int,
    dataset: str,
    miner_folders: Sequence[Path],
    target_bps: int,
    tolerance: float,
) -> ChainSession:
    """Deploy (or attach to) the contract per ``cfg`` (conf/chain), register the simulated miners and
    publish the task with its reward escrow and hidden target."""
    client = ModelMineClient.from_config(cfg)
    if client is None:
        raise ProtocolError("chain backend 'none' has no session")
    chain = client.chain
    publisher, aggregator = chain.funded_account(), chain.funded_account()
    register_simulated_miners(client, miner_folders, int(cfg.stake_wei))
    nonce = secrets.token_bytes(32)
    spec = TaskSpec(
        model_hash=model_hash,
        publisher_key=publisher_key,
        aggregator_key=aggregator_key,
        aggregator=aggregator.address,
        rounds=rounds,
        deadline=chain.timestamp() + int(cfg.task_duration_s),
        target_bps=target_bps,
        target_nonce=nonce,
        dataset_type=dataset,
        round_window_s=int(cfg.round_window_s),
        aggregator_share_bps=int(cfg.aggregator_share_bps),
        quorum_bps=int(cfg.quorum_bps),
        quant_bits=int(cfg.quant_bits),
    )
    task_id, _ = client.publish_task(publisher, spec, int(cfg.reward_pool_wei))
    return ChainSession(client, task_id, publisher, aggregator, target_bps, nonce, tolerance)
