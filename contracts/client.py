"""High-level Python API of the ModelMine contract (what the Flower strategy and scripts call).

One round, as the strategy drives it (task ``t``, round ``r``, attempt ``a`` = last attempt + 1;
miners sign, the server relays, and every miner may send its own signed message itself instead)::

    client.open_round(aggregator, t, r, a, support_hash, selected_addresses)
    client.relay_submissions(aggregator, t, r, a, submissions)    # commit window (idempotent batch)
    client.committed_miners(t, r, a)                              # the set I, once the window closed
    client.propose(aggregator, t, r, a, model_hash)               # candidate
    client.relay_votes_and_reveals(relayer, t, r, model_hash, votes, reveals, attempt=a)
        # votes -> finalize (when everyone voted) -> reveals -> settle (when everyone revealed)
    # or step by step / when someone is late (timeouts anyone may trigger):
    client.expire(anyone, t)                                  # no candidate in time: retry the round
    client.finalize(anyone, t)                                # after the vote window
    client.relay_reveals(relayer, t, r, reveals)              # auto-settles once everyone revealed
    client.settle(anyone, t)                                  # after the reveal window
    client.claim(account, task_ids)                           # any time: pull what is owed

``submissions``, ``votes`` and ``reveals`` are lists of ``(message, signature)`` pairs where the
message is an :mod:`aggregator.eip712` dataclass and the signature its 65-byte ``eip712.sign``
output; the client checks each pair belongs to the batch (task, round, attempt, support / model
hash) and converts signatures to EIP-2098 compact form. The contract re-verifies every signature.
Every state-changing method returns a :class:`contracts.chain.TxResult` (gas, decoded events) and
raises :class:`contracts.chain.ContractRevertError` (``.name`` = Solidity custom error) on revert.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3.exceptions import MismatchedABI

from aggregator import eip712
from contracts.build_info import load_artifact
from contracts.chain import Chain, ChainConfig, ChainError, TxResult

Signed = tuple[Any, bytes]


class TaskStatus(IntEnum):
    NONE = 0
    ACTIVE = 1
    COMPLETED = 2
    CANCELLED = 3


class Phase(IntEnum):
    IDLE = 0
    COMMIT = 1
    VOTING = 2
    REVEALING = 3


FLAG_COMMITTED, FLAG_REVEALED, FLAG_FAULT, FLAG_OPEN = 1, 4, 8, 16

#: Secure-aggregation backend ids fixed in a task (``TaskParams.secaggBackend``).
SECAGG_BACKEND_IDS = {"none": 0, "masked": 1, "nddfe": 2, "secaggplus": 3}
#: Support modes (``TaskParams.supportMode``).
SUPPORT_MODE_IDS = {"shared": 0, "local": 1}


@dataclass(frozen=True)
class TaskSpec:
    """What a publisher posts. ``target_bps``/``target_nonce`` stay private until ``reveal_target``;
    only their commitment goes on chain. Keys are 33-byte compressed secp256k1 points.

    The round settings (``k`` = support size cap, ``quant_bits``, ``clip``, ``secagg_backend``,
    ``support_mode``, ``threshold``) are fixed for the whole task: the contract caps a revealed score
    at ``k * (2^(bits-1)-1)^2`` and miners refuse a round plan that differs (:func:`check_round_settings`).
    """

    model_hash: bytes
    publisher_key: bytes
    aggregator_key: bytes
    aggregator: str
    rounds: int
    deadline: int
    target_bps: int
    target_nonce: bytes
    metadata_hash: bytes = b"\0" * 32
    dataset_type: str = "mnist"
    round_window_s: int = 3600
    aggregator_share_bps: int = 1000
    quorum_bps: int = 5000
    quant_bits: int = 15
    commit_window_s: int = 3600
    voter_share_bps: int = 1000
    k: int = 1 << 20
    clip: float = 0.5
    secagg_backend: str = "masked"
    support_mode: str = "shared"
    threshold: int = 2

    @property
    def clip_micros(self) -> int:
        """The clip as the integer the contract stores (millionths)."""
        return int(round(self.clip * 1_000_000))


class RoundSettingsMismatch(ValueError):
    """A round plan's reward-relevant setting differs from the task's (fixed at publish on chain)."""


def check_round_settings(task: dict[str, Any], *, backend: str, bits: int, clip: float, support_mode: str,
                         support_size: int, threshold: int | None = None) -> None:
    """Raise RoundSettingsMismatch unless a round's settings are the task's (``task``: ModelMineClient.task()).

    A miner calls this before training on a plan: a support larger than ``k`` or other bits would let
    the aggregator make an honest reveal exceed the task's score cap (slashing) or change rewards."""
    problems = []
    if SECAGG_BACKEND_IDS.get(backend, -1) != int(task["secaggBackend"]):
        problems.append(f"backend {backend!r} (task: id {task['secaggBackend']})")
    if int(bits) != int(task["quantBits"]):
        problems.append(f"bits {bits} (task: {task['quantBits']})")
    if int(round(float(clip) * 1_000_000)) != int(task["clipMicros"]):
        problems.append(f"clip {clip} (task: {int(task['clipMicros']) / 1e6})")
    if SUPPORT_MODE_IDS.get(support_mode, -1) != int(task["supportMode"]):
        problems.append(f"support mode {support_mode!r} (task: id {task['supportMode']})")
    if not 0 < int(support_size) <= int(task["k"]):
        problems.append(f"support size {support_size} (task: at most {task['k']})")
    if threshold is not None and int(threshold) != int(task["threshold"]):
        problems.append(f"threshold {threshold} (task: {task['threshold']})")
    if problems:
        raise RoundSettingsMismatch("round settings differ from the task's: " + "; ".join(problems))


def target_commitment(target_bps: int, nonce: bytes) -> bytes:
    """keccak256(abi.encode(uint256 targetBps, bytes32 nonce)), as checked by ``revealTarget``."""
    return keccak(encode(["uint256", "bytes32"], [target_bps, nonce]))


def dataset_type_bytes(name: str) -> bytes:
    """A dataset name as right-padded bytes32 (at most 32 ASCII bytes)."""
    raw = name.encode()
    if len(raw) > 32:
        raise ValueError("dataset type longer than 32 bytes")
    return raw.ljust(32, b"\0")


def compact_signature(sig: bytes) -> tuple[bytes, bytes]:
    """EIP-2098 (r, vs) from a 65-byte (r, s, v) signature."""
    if len(sig) != 65:
        raise eip712.SignatureError("signature must be 65 bytes (r, s, v)")
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    if v < 27:
        v += 27
    if v not in (27, 28):
        raise eip712.SignatureError(f"bad recovery id v={v}")
    vs = s | ((v - 27) << 255)
    return r, vs.to_bytes(32, "big")


def _decode(ev: Any, raw: Any) -> Any:
    """The raw log decoded as event ``ev``, or None when it is another event."""
    try:
        return ev.process_log(raw)
    except MismatchedABI:
        return None


def _matches(args: Any, filters: dict[str, Any]) -> bool:
    """``get_logs``' argument filters applied to decoded args (a list means any of its values)."""
    for key, want in filters.items():
        options = want if isinstance(want, list | tuple | set) else [want]
        value = args.get(key)
        if isinstance(value, str):
            if value.lower() not in {str(o).lower() for o in options}:
                return False
        elif value not in options:
            return False
    return True


def participants_hash(attempt: int, participants: Sequence[tuple[str, bytes]]) -> bytes:
    """The contract's keccak chain over (miner, commitment), seeded with the attempt number."""
    h = attempt.to_bytes(32, "big")
    for miner, commit in participants:
        h = keccak(encode(["bytes32", "address", "bytes32"], [h, to_checksum_address(miner), commit]))
    return h


class ModelMineClient:
    """Typed wrapper around one deployed ModelMine contract on a :class:`Chain`.

    Accounts passed to state-changing methods are ``eth_account`` LocalAccounts; the client never
    stores or logs their keys.
    """

    ARTIFACT = "ModelMine"

    def __init__(self, chain: Chain, address: str, from_block: int = 0) -> None:
        """Attach to the contract at ``address``; event queries start at ``from_block`` (its deploy block)."""
        art = load_artifact(self.ARTIFACT)
        self.from_block = from_block
        self.chain = chain
        self.address = to_checksum_address(address)
        self.abi = art["abi"]
        chain.register_errors(self.abi)
        self.contract = chain.w3.eth.contract(address=self.address, abi=self.abi)
        self.domain = eip712.Domain(chain_id=chain.chain_id, verifying_contract=self.address)
        self._topics: dict[bytes, str] = {}
        # task -> (last block scanned, Committed rows by (block, log index)): each round reads only the
        # blocks since the last read, so its cost does not grow with the chain's whole history.
        self._commit_logs: dict[int, tuple[int, dict[tuple[int, int, int], dict[str, Any]]]] = {}
        for item in self.abi:
            if item["type"] == "event":
                sig = f"{item['name']}({','.join(_canon(i) for i in item['inputs'])})"
                self._topics[keccak(text=sig)] = item["name"]

    # ------------------------------------------------------------------ construction

    @classmethod
    def deploy(
        cls,
        chain: Chain,
        deployer: LocalAccount,
        *,
        treasury: str | None = None,
        owner: str | None = None,
        fee_bps: int | None = None,
        min_stake_wei: int | None = None,
        slash_bps: int | None = None,
        unbonding_s: int | None = None,
    ) -> ModelMineClient:
        """Deploy a new ModelMine; unspecified parameters come from ``chain.cfg``."""
        cfg = chain.cfg
        art = load_artifact(cls.ARTIFACT)
        address, res = chain.deploy(
            art["abi"],
            art["bytecode"],
            deployer,
            to_checksum_address(owner or deployer.address),
            to_checksum_address(treasury or deployer.address),
            cfg.fee_bps if fee_bps is None else fee_bps,
            cfg.min_stake_wei if min_stake_wei is None else min_stake_wei,
            cfg.slash_bps if slash_bps is None else slash_bps,
            cfg.unbonding_s if unbonding_s is None else unbonding_s,
        )
        return cls(chain, address, from_block=res.block_number)

    @classmethod
    def from_config(cls, cfg: Any, deployer: LocalAccount | None = None) -> ModelMineClient | None:
        """Connect per a ``conf/chain/*.yaml`` mapping: None for backend "none"; attach to
        ``contract_address`` when set, else deploy from ``deployer`` (or the configured key, or a
        generated funded account on dev chains)."""
        conf = cfg if isinstance(cfg, ChainConfig) else ChainConfig.from_mapping(cfg)
        if conf.backend == "none":
            return None
        chain = Chain(conf)
        if conf.contract_address:
            return cls(chain, conf.contract_address)
        deployer = deployer or conf.role_account("deployer") or chain.funded_account()
        return cls.deploy(chain, deployer)

    # ------------------------------------------------------------------ plumbing

    def _tx(self, fn: Any, sender: LocalAccount, value: int = 0) -> TxResult:
        res = self.chain.transact(fn, sender, value=value)
        res.events = self.decode_logs(res.logs)
        return res

    def decode_logs(self, logs: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
        """(event name, args) for every log of this contract in ``logs``."""
        out = []
        for lg in logs:
            if to_checksum_address(lg["address"]) != self.address or not lg["topics"]:
                continue
            name = self._topics.get(bytes(lg["topics"][0]))
            if name is None:
                continue
            ev = self.contract.events[name]().process_log(lg)
            out.append((name, dict(ev["args"])))
        return out

    def events(self, name: str, from_block: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Args (plus ``blockNumber``, ``logIndex``) of every ``name`` event matching ``filters``
        on indexed arguments, oldest first."""
        ev = self.contract.events[name]()
        from_block = self.from_block if from_block is None else from_block
        if self.chain.cfg.backend == "embedded":
            logs = [lg for raw in self.chain.embedded_logs(self.address, from_block)
                    if (lg := _decode(ev, raw)) is not None and _matches(lg["args"], filters)]
        else:
            logs = self.chain._retry(
                lambda: ev.get_logs(from_block=from_block, to_block="latest", argument_filters=filters or None)
            )
        rows = []
        for lg in sorted(logs, key=lambda x: (x["blockNumber"], x["transactionIndex"], x["logIndex"])):
            rows.append({**dict(lg["args"]), "blockNumber": lg["blockNumber"],
                         "transactionIndex": lg["transactionIndex"], "logIndex": lg["logIndex"]})
        return rows

    def wait_for_event(
        self,
        name: str,
        *,
        from_block: int | None = None,
        timeout_s: float = 30.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        **filters: Any,
    ) -> dict[str, Any]:
        """Poll until a ``name`` event (matching ``filters`` and ``predicate``) appears; TimeoutError."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            for row in self.events(name, from_block=from_block, **filters):
                if predicate is None or predicate(row):
                    return row
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {name} event within {timeout_s}s")
            time.sleep(self.chain.cfg.poll_interval_s)

    # ------------------------------------------------------------------ tasks

    def publish_task(self, publisher: LocalAccount, spec: TaskSpec, reward_wei: int) -> tuple[int, TxResult]:
        """Post a task with ``reward_wei`` escrowed and its round settings fixed; returns (task id, tx)."""
        if spec.secagg_backend not in SECAGG_BACKEND_IDS:
            raise ValueError(f"secagg backend {spec.secagg_backend!r} has no on-chain id ({sorted(SECAGG_BACKEND_IDS)})")
        if spec.support_mode not in SUPPORT_MODE_IDS:
            raise ValueError(f"support mode {spec.support_mode!r} has no on-chain id ({sorted(SUPPORT_MODE_IDS)})")
        params = (
            spec.metadata_hash,
            spec.model_hash,
            dataset_type_bytes(spec.dataset_type),
            target_commitment(spec.target_bps, spec.target_nonce),
            spec.publisher_key,
            spec.aggregator_key,
            to_checksum_address(spec.aggregator),
            spec.rounds,
            spec.deadline,
            spec.commit_window_s,
            spec.round_window_s,
            spec.aggregator_share_bps,
            spec.voter_share_bps,
            spec.quorum_bps,
            spec.quant_bits,
            spec.k,
            spec.clip_micros,
            SECAGG_BACKEND_IDS[spec.secagg_backend],
            SUPPORT_MODE_IDS[spec.support_mode],
            spec.threshold,
        )
        res = self._tx(self.contract.functions.publishTask(params), publisher, value=reward_wei)
        return int(res.event("TaskPublished")["taskId"]), res

    def reveal_target(self, publisher: LocalAccount, task_id: int, target_bps: int, nonce: bytes) -> TxResult:
        """Open the hidden target accuracy (completes the task if a finalized round reached it)."""
        return self._tx(self.contract.functions.revealTarget(task_id, target_bps, nonce), publisher)

    def cancel_task(self, publisher: LocalAccount, task_id: int) -> TxResult:
        """Cancel: refunds the rounds never opened; a round in progress still runs to its end."""
        return self._tx(self.contract.functions.cancelTask(task_id), publisher)

    def close_expired(self, sender: LocalAccount, task_id: int) -> TxResult:
        """Complete a task past its deadline (refunds what no round in progress is owed)."""
        return self._tx(self.contract.functions.closeExpired(task_id), sender)

    # ------------------------------------------------------------------ miners

    def register_miner(self, miner: LocalAccount, public_key: bytes, stake_wei: int | None = None) -> TxResult:
        """Register ``miner`` directly with its secure-aggregation key and stake (default cfg.stake_wei)."""
        stake = self.chain.cfg.stake_wei if stake_wei is None else stake_wei
        return self._tx(self.contract.functions.register(public_key), miner, value=stake)

    def registration_message(self, miner: str, secagg_key: bytes, deadline: int) -> eip712.Registration:
        """The Registration the miner signs (``eip712.sign(client.domain, msg, key)``) for :meth:`register_for`."""
        nonce = int(self.chain.call(self.contract.functions.registrationNonce(to_checksum_address(miner))))
        return eip712.Registration(to_checksum_address(miner), bytes(secagg_key), nonce, int(deadline))

    def register_for(self, relayer: LocalAccount, miner: str, secagg_key: bytes, deadline: int, signature: bytes,
                     stake_wei: int | None = None) -> TxResult:
        """Relay a miner's signed registration; the relayer pays ``stake_wei``, which becomes the miner's
        stake (only the miner can ever withdraw it)."""
        stake = self.chain.cfg.stake_wei if stake_wei is None else stake_wei
        r, vs = compact_signature(signature)
        fn = self.contract.functions.registerFor(to_checksum_address(miner), secagg_key, int(deadline), r, vs)
        return self._tx(fn, relayer, value=stake)

    def add_stake(self, miner: LocalAccount, amount_wei: int) -> TxResult:
        return self._tx(self.contract.functions.addStake(), miner, value=amount_wei)

    def request_unstake(self, miner: LocalAccount) -> TxResult:
        return self._tx(self.contract.functions.requestUnstake(), miner)

    def release_tasks(self, sender: LocalAccount, miner: str, task_ids: Sequence[int]) -> TxResult:
        """Release ``miner``'s ended participations in ``task_ids`` (unlocks its stake; anyone may send)."""
        fn = self.contract.functions.releaseTasks(to_checksum_address(miner), [int(t) for t in task_ids])
        return self._tx(fn, sender)

    def withdraw_stake(self, miner: LocalAccount, task_ids: Sequence[int] | None = None) -> TxResult:
        """Withdraw the stake after unbonding, releasing the miner's ended participations first
        (``task_ids`` defaults to every task it committed in). Reverts OpenRounds while a round it
        committed in has not ended."""
        tasks = self.reward_tasks(miner.address) if task_ids is None else [int(t) for t in task_ids]
        return self._tx(self.contract.functions.withdrawStake(tasks), miner)

    # ------------------------------------------------------------------ round: open and commit

    def next_attempt(self, task_id: int) -> int:
        """The attempt number the next ``open_round`` must use (last attempt + 1)."""
        return int(self.round_state(task_id)["attempt"]) + 1

    def open_round(self, aggregator: LocalAccount, task_id: int, round_: int, attempt: int, support_hash: bytes,
                   selected: Sequence[str]) -> TxResult:
        """Aggregator only: open (round, attempt) with the selected miners' addresses and the support hash."""
        indices = []
        for address in selected:
            rec = self.miner(address)
            if not rec["registered"]:
                raise ValueError(f"selected miner {address} is not registered on chain")
            indices.append(int(rec["index"]))
        fn = self.contract.functions.openRound(task_id, round_, attempt, support_hash, indices)
        return self._tx(fn, aggregator)

    def _submission_items(self, task_id: int, round_: int, attempt: int, subs: Sequence[Signed]) -> list:
        support = bytes(self.round_state(task_id)["supportHash"])
        items = []
        for msg, sig in subs:
            if not isinstance(msg, eip712.Submission):
                raise TypeError("submissions must be (eip712.Submission, signature) pairs")
            if (msg.taskId, msg.round, msg.attempt) != (task_id, round_, attempt):
                raise ValueError(f"submission for task {msg.taskId} round {msg.round} attempt {msg.attempt} "
                                 f"does not belong to task {task_id} round {round_} attempt {attempt}")
            if bytes(msg.supportHash) != support:
                raise ValueError("submission signed for another support than the round's")
            r, vs = compact_signature(sig)
            items.append((bytes(msg.ciphertextHash), bytes(msg.commitment), r, vs))
        return items

    def relay_submissions(self, relayer: LocalAccount, task_id: int, round_: int, attempt: int,
                          submissions: Sequence[Signed]) -> TxResult:
        """Relay signed submissions in the commit window (idempotent: already-committed miners are skipped)."""
        items = self._submission_items(task_id, round_, attempt, submissions)
        return self._tx(self.contract.functions.commitBatch(task_id, round_, attempt, items), relayer)

    def commit(self, miner: LocalAccount, task_id: int, round_: int, attempt: int, support_hash: bytes,
               ciphertext_hash: bytes, commitment: bytes) -> TxResult:
        """The miner commits directly (no relayer): signs its Submission and sends it itself. Raises
        ChainError when the contract skipped it (not selected, unbonding, under the minimum stake)."""
        msg = eip712.Submission(task_id, round_, support_hash, ciphertext_hash, commitment, attempt)
        res = self.relay_submissions(miner, task_id, round_, attempt, [(msg, eip712.sign(self.domain, msg, miner.key))])
        if not res.all("Committed") and self.miner_round(task_id, miner.address)["attempt"] != attempt:
            raise ChainError(f"commit of {miner.address} in task {task_id} attempt {attempt} was skipped: "
                             "not selected, not registered, unbonding or under the task's minimum stake")
        return res

    def propose(self, aggregator: LocalAccount, task_id: int, round_: int, attempt: int, model_hash: bytes) -> TxResult:
        """Aggregator only: post the candidate after the commit window (or once all selected committed)."""
        return self._tx(self.contract.functions.propose(task_id, round_, attempt, model_hash), aggregator)

    def expire(self, sender: LocalAccount, task_id: int) -> TxResult:
        """Timeout of the commit phase (anyone): no candidate in time, or too few commitments."""
        return self._tx(self.contract.functions.expire(task_id), sender)

    def commit_deadline(self, task_id: int, round_: int, attempt: int) -> int:
        """End (unix time) of the commit window of the task's current (round, attempt)."""
        return int(self.chain.call(self.contract.functions.commitDeadline(task_id, round_, attempt)))

    def committed_miners(self, task_id: int, round_: int, attempt: int) -> list[str] | None:
        """Checksummed addresses that committed in (round, attempt), in commit order — the set I the
        publisher's key service may release a key for. None while that attempt's commit window is still
        open (chain time <= commit deadline and not every selected miner committed). For the current
        attempt the list is checked against the on-chain participants hash (ChainError when logs are
        missing)."""
        rs = self.round_state(task_id)
        current = int(rs["attempt"]) == attempt and int(rs["phase"]) != Phase.IDLE
        if current and int(rs["round"]) != round_:
            raise ValueError(f"attempt {attempt} of task {task_id} is round {rs['round']}, not {round_}")
        if current and int(rs["phase"]) == Phase.COMMIT and self.chain.timestamp() <= int(rs["commitDeadline"]) \
                and int(rs["participants"]) < int(rs["selected"]):
            return None
        out = self._commits(task_id, attempt, round_, bytes(rs["participantsHash"]) if current else None)
        return [m for m, _ in out]

    def _commits(self, task_id: int, attempt: int, round_: int | None, expected: bytes | None) -> list[tuple[str, bytes]]:
        """(miner, commitment) of ``attempt`` (and ``round_`` when given) in commit order. With
        ``expected`` (the on-chain participants hash) the list is checked, rescanned once on a mismatch,
        and a ChainError when it still differs (missing logs)."""

        def select(rows: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
            return [(to_checksum_address(r["miner"]), bytes(r["commitment"])) for r in rows
                    if int(r["attempt"]) == attempt and (round_ is None or int(r["round"]) == round_)]

        out = select(self._committed_rows(task_id))
        if expected is not None and participants_hash(attempt, out) != expected:
            out = select(self._committed_rows(task_id, rescan=True))
            if participants_hash(attempt, out) != expected:
                raise ChainError(f"committed list of task {task_id} attempt {attempt} does not match the chain (missing logs?)")
        return out

    def _committed_rows(self, task_id: int, rescan: bool = False) -> list[dict[str, Any]]:
        """Every ``Committed`` event of ``task_id``, oldest first, read incrementally (only blocks after
        the last read); ``rescan`` reads the whole range again (after a reorg dropped or moved logs)."""
        if rescan:
            self._commit_logs.pop(task_id, None)
        last, rows = self._commit_logs.get(task_id, (self.from_block - 1, {}))
        head = int(self.chain._retry(lambda: self.chain.w3.eth.block_number))
        if head > last:
            # A block mined between reading ``head`` and the query shows up again next time: keyed, not doubled.
            for r in self.events("Committed", from_block=last + 1, taskId=task_id):
                rows[(int(r["blockNumber"]), int(r["transactionIndex"]), int(r["logIndex"]))] = r
            self._commit_logs[task_id] = (head, rows)
        return [rows[key] for key in sorted(rows)]

    # ------------------------------------------------------------------ round: vote

    def vote(self, miner: LocalAccount, task_id: int, round_: int, model_hash: bytes, accept: bool,
             accuracy_bps: int, participants: Sequence[tuple[str, bytes]] | None = None,
             attempt: int | None = None) -> TxResult:
        """The participant votes directly (signs its Vote and sends it itself)."""
        attempt = self._attempt(task_id, attempt)
        msg = eip712.Vote(task_id, round_, model_hash, accept, accuracy_bps, attempt)
        return self.relay_votes(miner, task_id, round_, model_hash, [(msg, eip712.sign(self.domain, msg, miner.key))],
                                participants, attempt=attempt)

    def relay_votes(self, relayer: LocalAccount, task_id: int, round_: int, model_hash: bytes,
                    votes: Sequence[Signed], participants: Sequence[tuple[str, bytes]] | None = None,
                    attempt: int | None = None) -> TxResult:
        """Relay signed votes; the contract finalizes in the same tx once every participant voted
        (RoundFinalized / RoundRejected in ``.events``). ``participants`` defaults to :meth:`participants`."""
        return self.relay_votes_and_reveals(relayer, task_id, round_, model_hash, votes, (), participants, attempt)

    def relay_votes_and_reveals(self, relayer: LocalAccount, task_id: int, round_: int, model_hash: bytes,
                                votes: Sequence[Signed], reveals: Sequence[Signed],
                                participants: Sequence[tuple[str, bytes]] | None = None,
                                attempt: int | None = None) -> TxResult:
        """One transaction for the end of a round (the cheapest path): relay the votes; if they
        finalize the round, relay the reveals and settle when everyone revealed. When the round is
        rejected the reveals are ignored (RoundRejected in ``.events``)."""
        attempt = self._attempt(task_id, attempt)
        plist = list(participants) if participants is not None else self.participants(task_id)
        vitems = self._vote_items(task_id, round_, attempt, model_hash, votes, plist)
        ritems = self._reveal_items(task_id, round_, attempt, reveals, plist)
        fn = self.contract.functions.voteRevealBatch(task_id, round_, attempt, model_hash, plist, vitems, ritems)
        return self._tx(fn, relayer)

    def finalize(self, sender: LocalAccount, task_id: int) -> TxResult:
        """Decide the candidate after the vote window (or once rejection is certain); anyone."""
        return self._tx(self.contract.functions.finalize(task_id), sender)

    # ------------------------------------------------------------------ round: reveal and settle

    def participants(self, task_id: int) -> list[tuple[str, bytes]]:
        """The current attempt's (miner, commitment) list in commit order, from Committed events;
        checked against the on-chain participants hash."""
        rs = self.round_state(task_id)
        attempt = int(rs["attempt"])
        return self._commits(task_id, attempt, None, bytes(rs["participantsHash"]))

    def reveal(self, miner: LocalAccount, task_id: int, round_: int, score: int, nonce: bytes,
               participants: Sequence[tuple[str, bytes]] | None = None, attempt: int | None = None) -> TxResult:
        """The participant opens its own commitment (signs its Reveal and sends it itself)."""
        attempt = self._attempt(task_id, attempt)
        msg = eip712.Reveal(task_id, round_, score, nonce, attempt)
        return self.relay_reveals(miner, task_id, round_, [(msg, eip712.sign(self.domain, msg, miner.key))],
                                  participants, attempt=attempt)

    def relay_reveals(self, relayer: LocalAccount, task_id: int, round_: int, reveals: Sequence[Signed],
                      participants: Sequence[tuple[str, bytes]] | None = None, attempt: int | None = None) -> TxResult:
        """Relay signed reveals (an opening above the task's maximum score is a fault, slashed; one that does
        not open the commitment is skipped); settles in the same tx once every participant revealed."""
        attempt = self._attempt(task_id, attempt)
        plist = list(participants) if participants is not None else self.participants(task_id)
        items = self._reveal_items(task_id, round_, attempt, reveals, plist)
        return self._tx(self.contract.functions.revealBatch(task_id, round_, attempt, plist, items), relayer)

    def _attempt(self, task_id: int, attempt: int | None) -> int:
        return int(self.round_state(task_id)["attempt"]) if attempt is None else int(attempt)

    def _vote_items(self, task_id: int, round_: int, attempt: int, model_hash: bytes, votes: Sequence[Signed],
                    plist: Sequence[tuple[str, bytes]]) -> list[tuple[Any, ...]]:
        index = {to_checksum_address(m): i for i, (m, _) in enumerate(plist)}
        items = []
        for msg, sig in votes:
            if not isinstance(msg, eip712.Vote):
                raise TypeError("votes must be (eip712.Vote, signature) pairs")
            if (msg.taskId, msg.round, msg.attempt, bytes(msg.modelHash)) != (task_id, round_, attempt, bytes(model_hash)):
                raise ValueError(f"vote for task {msg.taskId} round {msg.round} attempt {msg.attempt} "
                                 "does not belong to this batch")
            signer = eip712.recover(self.domain, msg, sig)
            if signer not in index:
                raise eip712.SignatureError(f"vote signed by {signer}, not a participant")
            items.append((index[signer], bool(msg.accept), int(msg.accuracyBps), *compact_signature(sig)))
        return items

    def _reveal_items(self, task_id: int, round_: int, attempt: int, reveals: Sequence[Signed],
                      plist: Sequence[tuple[str, bytes]]) -> list[tuple[Any, ...]]:
        index = {to_checksum_address(m): i for i, (m, _) in enumerate(plist)}
        items = []
        for msg, sig in reveals:
            if not isinstance(msg, eip712.Reveal):
                raise TypeError("reveals must be (eip712.Reveal, signature) pairs")
            if (msg.taskId, msg.round, msg.attempt) != (task_id, round_, attempt):
                raise ValueError(f"reveal for task {msg.taskId} round {msg.round} attempt {msg.attempt} "
                                 "does not belong to this batch")
            signer = eip712.recover(self.domain, msg, sig)
            if signer not in index:
                raise eip712.SignatureError(f"reveal signed by {signer}, not a participant")
            items.append((index[signer], int(msg.score), bytes(msg.nonce), *compact_signature(sig)))
        return items

    def settle(self, sender: LocalAccount, task_id: int,
               participants: Sequence[tuple[str, bytes]] | None = None) -> TxResult:
        """Pay the finalized round once all revealed or after its reveal window; slashes non-revealers."""
        plist = list(participants) if participants is not None else self.participants(task_id)
        return self._tx(self.contract.functions.settle(task_id, plist), sender)

    # ------------------------------------------------------------------ balances

    def claim(self, account: LocalAccount, task_ids: Sequence[int] = ()) -> int:
        """Withdraw everything owed to ``account``: its address balance (fees, aggregator share,
        refunds) plus, for a miner, the rewards pending in ``task_ids``. Returns the amount paid
        (reverts NothingToClaim when there is nothing)."""
        if task_ids:
            fn = self.contract.functions.claimRewards([int(t) for t in task_ids])
        else:
            fn = self.contract.functions.claim()
        res = self._tx(fn, account)
        return int(res.event("Claimed")["amount"])

    def owed(self, address: str, task_ids: Sequence[int] = ()) -> int:
        """Wei ``address`` can claim now: address balance plus rewards pending in ``task_ids``."""
        addr = to_checksum_address(address)
        total = int(self.chain.call(self.contract.functions.owed(addr)))
        for t in task_ids:
            total += self.pending_rewards(t, addr)
        return total

    def pending_rewards(self, task_id: int, miner: str) -> int:
        """Miner rewards accrued in ``task_id`` and not yet claimed."""
        return int(self.chain.call(self.contract.functions.pendingRewards(task_id, to_checksum_address(miner))))

    def reward_tasks(self, miner: str) -> list[int]:
        """Tasks in which ``miner`` ever committed (candidates for ``claim(task_ids=...)``)."""
        return sorted({int(r["taskId"]) for r in self.events("Committed", miner=to_checksum_address(miner))})

    # ------------------------------------------------------------------ views

    def task(self, task_id: int) -> dict[str, Any]:
        """The stored task as a dict (field names as in Solidity)."""
        return self._struct("Task", self.chain.call(self.contract.functions.getTask(task_id)))

    def task_settings(self, task_id: int) -> dict[str, Any]:
        """The task's fixed round settings: k, quantBits, clipMicros, secaggBackend, supportMode,
        threshold, and the economics snapshotted at publish (feeBps, slashBps, aggregatorShareBps,
        voterShareBps, quorumBps, minStake, commitWindow, roundWindow)."""
        t = self.task(task_id)
        keys = ("k", "quantBits", "clipMicros", "secaggBackend", "supportMode", "threshold", "feeBps", "slashBps",
                "aggregatorShareBps", "voterShareBps", "quorumBps", "minStake", "commitWindow", "roundWindow")
        return {k: t[k] for k in keys}

    def escrow(self, task_id: int) -> int:
        """Wei the task still holds (pool minus every payout and refund)."""
        t = self.task(task_id)
        return int(t["pool"]) - int(t["released"])

    def round_state(self, task_id: int) -> dict[str, Any]:
        """The task's current round attempt (round, attempt, phase, counts, deadlines, hashes...).
        ``epoch`` is an alias of ``attempt`` (the task-wide attempt counter)."""
        rs = self._struct("RoundState", self.chain.call(self.contract.functions.getRound(task_id)))
        rs["epoch"] = rs["attempt"]
        return rs

    def miner_round(self, task_id: int, miner: str) -> dict[str, Any]:
        """A miner's per-task record (attempt, flags, score, pending)."""
        fn = self.contract.functions.minerRound(task_id, to_checksum_address(miner))
        return self._struct("MinerRound", self.chain.call(fn))

    def miner(self, address: str) -> dict[str, Any]:
        """A miner's stake record (stake, unlockAt, registered, index, openTasks)."""
        return self._struct("Miner", self.chain.call(self.contract.functions.miner(to_checksum_address(address))))

    def max_score(self, task_id: int) -> int:
        """Largest revealable score of the task: k * (2^(bits-1)-1)^2."""
        return int(self.chain.call(self.contract.functions.maxScore(task_id)))

    def task_count(self) -> int:
        return int(self.chain.call(self.contract.functions.taskCount()))

    def _struct(self, name: str, values: Any) -> dict[str, Any]:
        if isinstance(values, dict):
            return dict(values)
        for item in self.abi:
            for out in item.get("outputs", []) or []:
                if out.get("internalType", "").endswith(f".{name}"):
                    return {c["name"]: v for c, v in zip(out["components"], values, strict=True)}
        raise KeyError(name)


def _canon(item: dict[str, Any]) -> str:
    t = item["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_canon(c) for c in item["components"]) + ")" + t[5:]
    return t
