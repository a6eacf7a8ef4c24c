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


def compressed_pubkey(account: LocalAccount) -> bytes:
    """33-byte compressed secp256k1 public key of ``account`` (stand-in for an NDD-FE key)."""
    return keys.PrivateKey(bytes(account.key)).public_key.to_compressed_bytes()


@dataclass
class RoundResult:
    """Transactions of one round driven by :meth:`Scenario.run_round`."""

    propose: TxResult
    votes: TxResult
    reveals: TxResult | None
    openings: dict[str, commitments.Opening] = field(default_factory=dict)

    @property
    def gas(self) -> int:
        return sum(t.gas_used for t in (self.propose, self.votes, self.reveals) if t is not None)


class Scenario:
    """A deployed contract with a publisher, an aggregator (also the relayer), a treasury and miners."""

    def __init__(self, client: ModelMineClient, n_miners: int, stake_wei: int | None = None) -> None:
        self.client = client
        chain = client.chain
        self.publisher = chain.funded_account()
        self.aggregator = chain.funded_account()
        self.miners: list[LocalAccount] = [chain.funded_account() for _ in range(n_miners)]
        for m in self.miners:
            client.register_miner(m, compressed_pubkey(m), stake_wei)

    def spec(self, rounds: int = 3, target_bps: int = 9000, **kw: Any) -> tuple[TaskSpec, bytes]:
        """A TaskSpec (deadline a week ahead) and its secret target nonce."""
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
        )
        base.update(kw)
        return TaskSpec(**base), nonce

    def publish(self, reward_wei: int = 10**18, **kw: Any) -> int:
        spec, _ = self.spec(**kw)
        task_id, _ = self.client.publish_task(self.publisher, spec, reward_wei)
        return task_id

    def submissions(
        self, task_id: int, round_: int, support_hash: bytes, scores: dict[str, int], miners: list[LocalAccount] | None = None
    ) -> tuple[list[tuple[eip712.Submission, bytes]], dict[str, commitments.Opening]]:
        """Signed Submissions (and the openings to reveal later) for ``miners`` with ``scores``."""
        out, openings = [], {}
        for m in miners or self.miners:
            op = commitments.Opening(scores[m.address], commitments.new_nonce())
            c = commitments.commitment(op.score, op.nonce, task_id, round_, m.address)
            msg = eip712.Submission(task_id, round_, support_hash, keccak(m.address.encode() + c), c)
            out.append((msg, eip712.sign(self.client.domain, msg, m.key)))
            openings[m.address] = op
        return out, openings

    def votes(self, task_id: int, round_: int, model_hash: bytes, accept: dict[str, bool],
              accuracy: dict[str, int], miners: list[LocalAccount] | None = None) -> list[tuple[eip712.Vote, bytes]]:
        out = []
        for m in miners or self.miners:
            msg = eip712.Vote(task_id, round_, model_hash, accept[m.address], accuracy[m.address])
            out.append((msg, eip712.sign(self.client.domain, msg, m.key)))
        return out

    def reveals(self, task_id: int, round_: int, openings: dict[str, commitments.Opening],
                miners: list[LocalAccount] | None = None) -> list[tuple[eip712.Reveal, bytes]]:
        out = []
        for m in miners or self.miners:
            op = openings[m.address]
            msg = eip712.Reveal(task_id, round_, op.score, op.nonce)
            out.append((msg, eip712.sign(self.client.domain, msg, m.key)))
        return out

    def run_round(self, task_id: int, round_: int, *, accept: bool = True, k: int = 1000,
                  scores: dict[str, int] | None = None, accuracy_bps: int = 8000,
                  miners: list[LocalAccount] | None = None, reveal: bool = True,
                  combined: bool = False) -> RoundResult:
        """Propose (with all submissions), relay all votes, then (if accepted) relay all reveals;
        with ``combined`` votes and reveals go in one ``voteRevealBatch`` (``reveals`` is then None)."""
        miners = miners or self.miners
        scores = scores or {m.address: 1000 + 17 * i for i, m in enumerate(miners)}
        support = keccak(f"support {task_id} {round_} {secrets.token_hex(4)}".encode())
        model = keccak(f"model {task_id} {round_} {secrets.token_hex(4)}".encode())
        subs, openings = self.submissions(task_id, round_, support, scores, miners)
        prop = self.client.propose(self.aggregator, task_id, round_, model, support, k, subs)
        votes = self.votes(task_id, round_, model, {m.address: accept for m in miners},
                           {m.address: accuracy_bps for m in miners}, miners)
        plist = [(m.address, msg.commitment) for m, (msg, _) in zip(miners, subs, strict=True)]
        if combined:
            vres = self.client.relay_votes_and_reveals(self.aggregator, task_id, round_, model, votes,
                                                       self.reveals(task_id, round_, openings, miners), plist)
            return RoundResult(prop, vres, None, openings)
        vres = self.client.relay_votes(self.aggregator, task_id, round_, model, votes, plist)
        rres = None
        if accept and reveal:
            rres = self.client.relay_reveals(self.aggregator, task_id, round_,
                                             self.reveals(task_id, round_, openings, miners), plist)
        return RoundResult(prop, vres, rres, openings)
