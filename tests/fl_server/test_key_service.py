"""The publisher's key service: issuing policy, durable ledger and its authenticated HTTP front.

The attacks of issue 11 (defects 2 and 3) live in test_key_service_attacks.py; this file checks the
normal behaviour they rely on.
"""

from __future__ import annotations

import numpy as np
import pytest
from eth_account import Account

from aggregator import secagg
from aggregator.key_issuer import KeyIssuer, KeyRefused, MemoryLedger
from aggregator.secagg import MinerKeys, PublisherKeys
from fl_server.key_service import (
    KeyServiceError,
    KeyServiceUnavailable,
    PublisherKeyService,
    RemoteKeyService,
    new_credential,
)
from scripts.key_service import make_server, serve_in_thread

TASK, ROUND, ATTEMPT = 1, 3, 7


class FakeChain:
    """A CommitmentSource with a settable open epoch and committed set (the chain in unit tests)."""

    def __init__(self, epoch: tuple[int, int] | None, committed: set[str] | None) -> None:
        self.epoch = epoch
        self.members = committed
        self.window_open = False

    def current_epoch(self, task_id: int) -> tuple[int, int] | None:
        return self.epoch

    def committed(self, task_id: int, round_: int, attempt: int) -> frozenset[str] | None:
        if self.window_open:
            raise KeyRefused("the commit window is still open")
        return None if self.members is None else frozenset(self.members)


@pytest.fixture
def parties():
    miners = {Account.create().address: MinerKeys.generate() for _ in range(4)}
    addresses = sorted(miners)
    chain = FakeChain((ROUND, ATTEMPT), set(addresses[:3]))  # the 4th did not commit
    issuer = KeyIssuer("masked", PublisherKeys.generate(), lambda a: miners[a].public, 2, chain, MemoryLedger())
    return issuer, miners, addresses, chain


def test_the_key_decrypts_the_sum_of_that_set(parties):
    issuer, miners, addresses, _ = parties
    idx = np.array([2, 5, 11, 40])
    xs = {a: np.array([1, -2, 3, 4]) * (i + 1) for i, a in enumerate(addresses[:3])}
    cts = [secagg.encrypt("masked", xs[a], idx, TASK, ATTEMPT, miners[a].secret, issuer.public) for a in addresses[:3]]
    key = issuer.issue(TASK, ROUND, ATTEMPT, addresses[:3], idx)
    assert np.array_equal(secagg.decrypt_sum("masked", cts, key, 3), sum(xs.values()))


def test_one_set_per_epoch_and_the_same_request_again_is_idempotent(parties):
    issuer, _, addresses, chain = parties
    idx = np.arange(5)
    k1 = issuer.issue(TASK, ROUND, ATTEMPT, addresses[:2], idx)
    assert issuer.issue(TASK, ROUND, ATTEMPT, list(reversed(addresses[:2])), idx) == k1
    with pytest.raises(KeyRefused, match="another set"):
        issuer.issue(TASK, ROUND, ATTEMPT, addresses[:3], idx)
    with pytest.raises(KeyRefused, match="another set"):
        issuer.issue(TASK, ROUND, ATTEMPT, addresses[:2], np.arange(6))
    chain.epoch = (ROUND + 1, ATTEMPT + 1)  # the chain moved on: the next epoch is fine
    issuer.issue(TASK, ROUND + 1, ATTEMPT + 1, addresses[:3], idx)


def test_in_process_service_checks_the_credential(parties):
    issuer, miners, addresses, chain = parties
    svc = PublisherKeyService("masked", issuer.keys, new_credential(), issuer.miner_key, commitments=chain)
    with pytest.raises(KeyServiceError, match="only the task's aggregator"):
        svc.functional_key(b"x" * 32, TASK, ROUND, ATTEMPT, addresses[:2], np.arange(3))
    assert svc.functional_key(svc.credential, TASK, ROUND, ATTEMPT, addresses[:2], np.arange(3))


def test_http_round_trip_and_refusals(parties):
    issuer, _, addresses, _ = parties
    credential = new_credential()
    server = make_server(issuer, credential)
    serve_in_thread(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = RemoteKeyService(url, credential, timeout=5)
        key = client.functional_key(credential, TASK, ROUND, ATTEMPT, addresses[:2], np.arange(3))
        assert key == issuer.issue(TASK, ROUND, ATTEMPT, addresses[:2], np.arange(3))
        with pytest.raises(KeyServiceError, match="HTTP 403.*another set"):
            client.functional_key(credential, TASK, ROUND, ATTEMPT, addresses[:3], np.arange(3))
        intruder = RemoteKeyService(url, b"y" * 32, timeout=5)  # cannot even authenticate the reply
        with pytest.raises(KeyServiceUnavailable, match="not authenticated"):
            intruder.functional_key(b"y" * 32, TASK, ROUND, ATTEMPT, addresses[:2], np.arange(3))
    finally:
        server.shutdown()
        server.server_close()
