"""Scenario helpers for tests, the gas report and demos: funded accounts, signed miner messages and
one-call rounds on top of :class:`contracts.client.ModelMineClient`. Not used by production code
paths; accounts here are generated (never loaded from anywhere)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_keys import keys
from eth_utils import keccak

from aggregator import commitments, eip712
from contracts.chain import TxResult
from contracts.client import ModelMineClient, TaskSpec

Signed = tuple[Any, bytes]


def compressed_pubkey(account: LocalAccount) -> bytes:
    """33-byte compressed secp256k1 public key of ``account`` (stand-in for a secure-aggregation key)."""
    return keys.PrivateKey(bytes(account.key)).public_key.to_compressed_bytes()


@dataclass
class RoundResult:
    """Transactions of one round driven by :meth:`Scenario.run_round`."""

    open: TxResult
    commit: TxResult
    propose: TxResult
    votes: TxResult
    reveals: TxResult | None
    attempt: int = 0
    openings: dict[str, commitments.Opening] = field(default_factory=dict)
    participants: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def txs(self) -> list[TxResult]:
        return [t for t in (self.open, self.commit, self.propose, self.votes, self.reveals) if t is not None]

    @property
    def gas(self) -> int:
        return sum(t.gas_used for t in self.txs)


class Scenario:
    """A deployed contract with a publisher, an aggregator (also the relayer), a treasury and miners."""

    def __init__(self, client: ModelMineClient, n_miners: int, stake_wei: int | None = None) -> None:
        self.client = client
        chain = client.chain
        self.publisher = chain.funded_account()
        self.aggregator = chain.funded_account()
        self.miners: list[LocalAccount] = [chain.funded_account(10**18) for _ in range(n_miners)]
        for m in self.miners:
            client.register_miner(m, compressed_pubkey(m), stake_wei)

    def spec(self, rounds: int = 3, target_bps: int = 9000, **kw: Any) -> tuple[TaskSpec, bytes]:
        """A TaskSpec (deadline a week ahead, k = 1000, threshold 2) and its secret target nonce."""
        nonce = secrets.token_bytes(32)
        base: dict[str, Any] = dict(
            model_hash=keccak(b"initial model"),
            publisher_key=compressed_pubkey(self.publisher),
            aggregator_key=compressed_pubkey(self.aggregator),
            aggregator=self.aggregator.address,
            rounds=rounds,
            deadline=self.client.chain.timestamp() + 7 * 24 * 3600,
            target_bps=target_bps,
            target_nonce=nonce,
            metadata_hash=keccak(b"metadata"),
            k=1000,
            threshold=2,
        )
        base.update(kw)
        return TaskSpec(**base), nonce

    def publish(self, reward_wei: int = 10**18, **kw: Any) -> int:
        spec, _ = self.spec(**kw)
        task_id, _ = self.client.publish_task(self.publisher, spec, reward_wei)
        return task_id

    def open(self, task_id: int, miners: list[LocalAccount] | None = None, support: bytes | None = None) -> tuple[int, int, bytes]:
        """Open the task's next attempt for ``miners`` (default all); returns (round, attempt, support hash)."""
        rs = self.client.round_state(task_id)
        round_, attempt = int(rs["round"]), int(rs["attempt"]) + 1
        support = support or keccak(f"support {task_id} {attempt} {secrets.token_hex(4)}".encode())
        self.client.open_round(self.aggregator, task_id, round_, attempt, support,
                               [m.address for m in (miners or self.miners)])
        return round_, attempt, support

    def submissions(
        self, task_id: int, round_: int, support_hash: bytes, scores: dict[str, int],
        miners: list[LocalAccount] | None = None, attempt: int = 1,
    ) -> tuple[list[Signed], dict[str, commitments.Opening]]:
        """Signed Submissions (and the openings to reveal later) for ``miners`` with ``scores``."""
        out, openings = [], {}
        for m in miners or self.miners:
            op = commitments.Opening(scores[m.address], commitments.new_nonce())
            c = commitments.commitment(op.score, op.nonce, task_id, round_, m.address, attempt)
            msg = eip712.Submission(task_id, round_, support_hash, keccak(m.address.encode() + c), c, attempt)
            out.append((msg, eip712.sign(self.client.domain, msg, m.key)))
            openings[m.address] = op
        return out, openings

    def votes(self, task_id: int, round_: int, model_hash: bytes, accept: dict[str, bool],
              accuracy: dict[str, int], miners: list[LocalAccount] | None = None, attempt: int = 1) -> list[Signed]:
        out = []
        for m in miners or self.miners:
            msg = eip712.Vote(task_id, round_, model_hash, accept[m.address], accuracy[m.address], attempt)
            out.append((msg, eip712.sign(self.client.domain, msg, m.key)))
        return out

    def reveals(self, task_id: int, round_: int, openings: dict[str, commitments.Opening],
                miners: list[LocalAccount] | None = None, attempt: int = 1) -> list[Signed]:
        out = []
        for m in miners or self.miners:
            op = openings[m.address]
            msg = eip712.Reveal(task_id, round_, op.score, op.nonce, attempt)
            out.append((msg, eip712.sign(self.client.domain, msg, m.key)))
        return out

    def run_round(self, task_id: int, *, accept: bool = True, scores: dict[str, int] | None = None,
                  accuracy_bps: int = 8000, miners: list[LocalAccount] | None = None, reveal: bool = True,
                  combined: bool = False) -> RoundResult:
        """openRound (``miners`` selected), one commitBatch with all submissions, propose, then votes and
        (if accepted) reveals: in one ``voteRevealBatch`` with ``combined``, else two batches."""
        miners = miners or self.miners
        scores = scores or {m.address: 1000 + 17 * i for i, m in enumerate(miners)}
        rs = self.client.round_state(task_id)
        round_, attempt = int(rs["round"]), int(rs["attempt"]) + 1
        support = keccak(f"support {task_id} {attempt} {secrets.token_hex(4)}".encode())
        model = keccak(f"model {task_id} {attempt} {secrets.token_hex(4)}".encode())
        opened = self.client.open_round(self.aggregator, task_id, round_, attempt, support, [m.address for m in miners])
        subs, openings = self.submissions(task_id, round_, support, scores, miners, attempt)
        com = self.client.relay_submissions(self.aggregator, task_id, round_, attempt, subs)
        prop = self.client.propose(self.aggregator, task_id, round_, attempt, model)
        votes = self.votes(task_id, round_, model, {m.address: accept for m in miners},
                           {m.address: accuracy_bps for m in miners}, miners, attempt)
        plist = [(m.address, msg.commitment) for m, (msg, _) in zip(miners, subs, strict=True)]
        if combined:
            vres = self.client.relay_votes_and_reveals(
                self.aggregator, task_id, round_, model, votes,
                self.reveals(task_id, round_, openings, miners, attempt), plist, attempt)
            return RoundResult(opened, com, prop, vres, None, attempt, openings, plist)
        vres = self.client.relay_votes(self.aggregator, task_id, round_, model, votes, plist, attempt)
        rres = None
        if accept and reveal:
            rres = self.client.relay_reveals(self.aggregator, task_id, round_,
                                             self.reveals(task_id, round_, openings, miners, attempt), plist, attempt)
        return RoundResult(opened, com, prop, vres, rres, attempt, openings, plist)
