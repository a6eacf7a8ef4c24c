"""Miners register themselves; the server only relays.

1. ``query.register`` to every node, before any task is published: each miner answers with its address,
   secure-aggregation public key and an EIP-191 signature (aggregator.registration) bound to the task's
   chain id. The server verifies the signature and binds the node to that address (one node, one
   address). A miner whose keys are missing or malformed stops the run here, with its error quoted.
2. With a chain: the server funds new addresses on dev chains only, asks each unregistered miner
   (``query.register_tx``) for a signed ``register(publicKey)`` transaction carrying its stake, checks
   that it is exactly that call from that miner, and broadcasts it unchanged. The stake is the miner's,
   the registration is the miner's; the server never sees a miner's key.

Without a chain the registry is the set of verified registrations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from eth_utils import to_checksum_address
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from web3.logs import DISCARD

from aggregator.registration import Registration, RegistrationError, check_register_tx, verify_registration
from fl_server.chain_round import ChainSession
from fl_server.registry import MinerRegistry, RegistryError

log = logging.getLogger("modelmine.enrollment")
REGISTER_GAS = 500_000


class EnrollmentError(RuntimeError):
    """A miner could not register (its error is quoted), or too few miners registered."""


def _gist(reason: str) -> str:
    """The exception line of a ClientApp's error (its reason may hold a whole traceback)."""
    lines = [ln.strip() for ln in str(reason).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def _ask(grid: Grid, nodes: Sequence[int], action: str, config: dict[str, Any], timeout: float) -> list[Message]:
    messages = [
        Message(content=RecordDict({"config": ConfigRecord(dict(config))}), dst_node_id=node,
                message_type=f"query.{action}")
        for node in nodes
    ]
    return list(grid.send_and_receive(messages, timeout=timeout))


def collect_registrations(
    grid: Grid, nodes: Sequence[int], base_config: dict[str, Any], chain_id: int, contract: str, timeout: float
) -> dict[int, Registration]:
    """Signed registrations by node id; a miner that fails to answer is a fatal, named error."""
    config = {**base_config, "mm-chain-id": int(chain_id), "mm-contract": contract}
    found: dict[int, Registration] = {}
    errors: list[str] = []
    for reply in _ask(grid, nodes, "register", config, timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            errors.append(f"miner node {node}: {_gist(reply.error.reason)}")
            continue
        try:
            reg = Registration.from_config(reply.content["registration"])
            verify_registration(reg, chain_id, contract)
        except (KeyError, RegistrationError) as exc:
            errors.append(f"miner node {node}: {exc}")
            continue
        if any(r.address == reg.address for r in found.values()):
            errors.append(f"miner node {node}: address {reg.address} already registered by another node")
            continue
        found[node] = reg
    if errors:
        raise EnrollmentError("registration failed: " + "; ".join(errors))
    missing = sorted(set(nodes) - set(found))
    if missing:
        raise EnrollmentError(f"no registration from nodes {missing} within {timeout:.0f} s")
    return found


def relay_onchain(
    grid: Grid, session: ChainSession, regs: dict[int, Registration], base_config: dict[str, Any],
    stake_wei: int, timeout: float, fund_dev_accounts: bool,
) -> dict[str, bytes]:
    """Broadcast each unregistered miner's own signed ``register`` transaction (stake included);
    the secure-aggregation key each one registered, read from its transaction's receipt."""
    client = session.client
    chain = client.chain
    w3 = chain.w3
    pending = {n: r for n, r in regs.items() if not bool(client.miner(r.address).get("registered"))}
    registered: dict[str, bytes] = {}
    if not pending:
        return registered
    for reg in pending.values():
        if fund_dev_accounts and chain.balance(reg.address) < stake_wei + 10**17:
            chain.fund(reg.address, stake_wei + 10**18)
    block = w3.eth.get_block("latest")
    tip = 10**9
    max_fee = 2 * int(block.get("baseFeePerGas", 0) or 0) + tip
    by_node: dict[int, dict[str, Any]] = {}
    for node, reg in pending.items():
        by_node[node] = {
            **base_config, "mm-chain-id": chain.chain_id, "mm-contract": client.address,
            "mm-stake-wei": str(stake_wei), "mm-nonce": int(w3.eth.get_transaction_count(reg.address, "pending")),
            "mm-gas": REGISTER_GAS, "mm-max-fee": str(max_fee), "mm-max-priority-fee": str(tip),
        }
    messages = [
        Message(content=RecordDict({"config": ConfigRecord(cfg)}), dst_node_id=node, message_type="query.register_tx")
        for node, cfg in by_node.items()
    ]
    errors: list[str] = []
    hashes = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        reg = pending.get(node)
        try:
            if reg is None or reply.has_error():
                raise RegistrationError(_gist(reply.error.reason) if reply.has_error() else "unexpected reply")
            raw = bytes.fromhex(str(reply.content["registration"]["raw-tx"]))
            check_register_tx(raw, reg, client.address, stake_wei, chain.chain_id)
            with chain._lock:  # one sender of transactions at a time on this client
                hashes.append((reg.address, w3.eth.send_raw_transaction(raw)))
        except (KeyError, ValueError, RegistrationError) as exc:
            errors.append(f"miner node {node}: {exc}")
    for address, tx_hash in hashes:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=chain.cfg.tx_timeout_s)
        if int(receipt["status"]) != 1:
            errors.append(f"register transaction of {address} reverted")
            continue
        for event in client.contract.events.MinerRegistered().process_receipt(receipt, errors=DISCARD):
            registered[to_checksum_address(event["args"]["miner"])] = bytes(event["args"]["publicKey"])
        log.info("miner %s registered on chain with its own stake (%.4f ETH)", address, stake_wei / 1e18)
    if errors:
        raise EnrollmentError("on-chain registration failed: " + "; ".join(errors))
    return registered


def enroll(
    grid: Grid, regs: dict[int, Registration], base_config: dict[str, Any], *, session: ChainSession | None,
    stake_wei: int = 0, timeout: float = 120.0, fund_dev_accounts: bool = True,
) -> MinerRegistry:
    """The registry of the miners behind ``regs`` (from :func:`collect_registrations`, done before
    anything is published): relayed on chain when there is one (the registry is then read back from
    the chain's events), else the verified registrations themselves; every node bound to its address."""
    if session is not None:
        # Keys from this run's register receipts, plus one filtered log query for miners registered
        # before it: never a scan of every registration (that grows with all miners ever registered).
        fresh = relay_onchain(grid, session, regs, base_config, stake_wei, timeout, fund_dev_accounts)
        earlier = {to_checksum_address(r.address) for r in regs.values()} - set(fresh)
        registry = session.registry(sorted(earlier))
        for address, key in fresh.items():
            registry.register(address, key)
    else:
        registry = MinerRegistry()
        for reg in regs.values():
            registry.register(reg.address, reg.secagg_public)
    for node, reg in regs.items():
        try:
            onchain = registry.key_of(reg.address)
        except RegistryError as exc:
            raise EnrollmentError(f"{reg.address}: no MinerRegistered event on chain for it ({exc})") from exc
        if onchain != reg.secagg_public:
            raise EnrollmentError(f"{reg.address}: the chain holds another secure-aggregation key than it signed")
        registry.bind(node, reg.address)
    log.info("%d miners registered (signed by themselves)%s", len(regs), " and staked on chain" if session else "")
    return registry
