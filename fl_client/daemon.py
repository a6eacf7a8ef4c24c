"""The miner daemon: watch the chain for tasks, join the ones this miner can serve, run its
SuperNode for each, reveal when nobody relays, claim rewards, and survive restarts.

One loop, every ``chain.poll_interval_s``:

1. New ``TaskPublished`` events since the last handled block: for each, download the task spec and
   the initial model from the model store, verify both against the hashes on chain, read this
   miner's data manifest, balance and stake, and :func:`fl_client.validator.decide`. A skipped task
   is logged with every reason; a joined task gets this miner's own registration/stake transaction
   (signed with its key) and a supervised SuperNode plus app guard (fl_client.supervisor).
2. Each joined task: restart crashed children (with backoff); during a round's reveal phase, if the
   server did not relay this miner's reveal within ``reveal_grace_s``, send it directly; when the
   task is over, stop its processes and claim the rewards.

Everything the daemon decides is written to ``<miner dir>/daemon/state.json`` (atomic) before it
acts on it, so a restart resumes: joined tasks get their SuperNode back, nothing is staked or
claimed twice. SIGTERM/SIGINT stop the children and exit 0. Keys are loaded once and never logged.
Chain calls retry with exponential backoff (contracts.chain); an unreachable node is logged and
retried at the next tick instead of killing the daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from aggregator.eip712 import Domain
from aggregator.protocol import task_key
from contracts.chain import Chain, ChainConfig, ChainError
from contracts.client import ModelMineClient
from fl_client.identity import IdentityError, MinerIdentity, load_identity
from fl_client.state import DaemonState, StateCorrupt, StateStore, TaskRecord
from fl_client.store_client import StoreClient, StoreError
from fl_client.supervisor import SuperNodeSettings, TaskProcesses
from fl_client.validator import ChainTask, MinerFacts, MinerPolicy, decide

log = logging.getLogger("modelmine.miner")

ACTIVE, COMPLETED, CANCELLED = 1, 2, 3
REVEALING = 3  # contracts IModelMine.Phase: Idle, Commit, Voting, Revealing
FLAG_COMMITTED, FLAG_REVEALED = 1, 4


@dataclass
class DaemonConfig:
    """conf/miner.yaml, resolved (see that file for the meaning of each setting)."""

    miner_dir: Path
    data_dir: Path
    rpc_url: str
    contract_address: str
    store_url: str
    supernode: SuperNodeSettings
    allowed_fab_hashes: list[str]
    policy: MinerPolicy
    stake_wei: int
    from_block: int = 0
    poll_interval_s: float = 2.0
    chain_retries: int = 8
    chain_backoff_s: float = 0.5
    reveal_grace_s: float = 30.0
    claim: bool = True
    supernode_backoff_s: float = 1.0
    supernode_max_backoff_s: float = 60.0
    threads: int = 1
    exit_when_idle: bool = False  # stop once every joined task is over (tests, local network)


@dataclass
class Running:
    record: TaskRecord
    processes: TaskProcesses
    chain_task: ChainTask
    key: str  # the task key where the ClientApp keeps this task's openings
    reveal_seen_at: dict[int, float] = field(default_factory=dict)


class MinerDaemon:
    def __init__(self, cfg: DaemonConfig, identity: MinerIdentity | None = None) -> None:
        self.cfg = cfg
        self.identity = identity or load_identity(cfg.miner_dir)
        self.account: LocalAccount = Account.from_key(self.identity.eth_key)
        self.store = StateStore(cfg.miner_dir)
        try:
            self.state = self.store.load()
        except StateCorrupt as exc:
            log.error("%s; starting from the chain", exc)
            self.state = DaemonState()
        chain_cfg = ChainConfig(backend="rpc", rpc_url=cfg.rpc_url, retries=cfg.chain_retries,
                                backoff_s=cfg.chain_backoff_s, poll_interval_s=cfg.poll_interval_s)
        self.chain = Chain(chain_cfg)
        self.client = ModelMineClient(self.chain, cfg.contract_address, from_block=cfg.from_block)
        self.blobs = StoreClient(cfg.store_url, cfg.miner_dir / "cache")
        self.running: dict[int, Running] = {}
        self._stop = False

    # -- lifecycle ------------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> int:
        """Loop until SIGTERM/SIGINT (or, with ``exit_when_idle``, until every joined task is over)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info("miner %s watching %s (contract %s), store %s, data %s", self.account.address, self.cfg.rpc_url,
                 self.client.address, self.cfg.store_url, self.cfg.data_dir)
        self.resume()
        try:
            while not self._stop:
                try:
                    self.tick()
                except ChainError as exc:  # node down: keep the children, try again next tick
                    log.warning("chain unavailable (%s); retrying in %.0f s", exc, self.cfg.poll_interval_s)
                if self.cfg.exit_when_idle and self.state.tasks and not self.running and all(
                        r.status in ("finished", "skipped", "failed") for r in self.state.tasks.values()):
                    log.info("every task is over; exiting")
                    break
                self._sleep(self.cfg.poll_interval_s)
        finally:
            self.shutdown()
        return 0

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop and time.monotonic() < end:
            time.sleep(min(0.2, end - time.monotonic()) if end > time.monotonic() else 0)

    def shutdown(self) -> None:
        for run in self.running.values():
            run.processes.stop()
        self.running.clear()
        self.store.save(self.state)
        log.info("miner daemon stopped")

    def resume(self) -> None:
        """Restart the SuperNodes of tasks joined before a restart (if they are still active)."""
        for record in self.state.tasks.values():
            if record.status in ("joined", "running"):
                published = self._published(record.task_id)
                if published is None:
                    continue
                task = self._chain_task(published)
                if task.status != ACTIVE:
                    self._finish(record, task)
                    continue
                log.info("resuming task %d", record.task_id)
                self._start_processes(record, task, adopt=record.child_pids)

    # -- one tick ------------------------------------------------------------------------------
    def tick(self) -> None:
        latest = self.chain.block_number()
        start = max(self.state.last_block + 1, self.cfg.from_block)
        if latest >= start:
            for event in self.client.events("TaskPublished", from_block=start):
                if int(event["blockNumber"]) <= latest:
                    self.consider(event)
            self.state.last_block = latest
            self.store.save(self.state)
        for task_id in list(self.running):
            self.supervise(self.running[task_id])

    def consider(self, published: dict[str, Any]) -> None:
        """Validate one published task and join it or log why not."""
        task_id = int(published["taskId"])
        if task_id in self.state.tasks and self.state.tasks[task_id].status != "seen":
            return
        task = self._chain_task(published)
        facts = self._facts(task)
        decision = decide(task, facts, self.cfg.policy)
        record = TaskRecord(task_id=task_id, status="seen", model_hash=task.model_hash.hex(),
                            spec_hash=task.metadata_hash.hex())
        if not decision.accept:
            record.status, record.reason = "skipped", "; ".join(decision.reasons)
            self.state.tasks[task_id] = record
            self.store.save(self.state)
            log.info("task %d: %s", task_id, decision.explain())
            return
        log.info("task %d: joining (data set %s, reward %.4f ETH, %d rounds)", task_id, task.dataset_type,
                 task.reward_wei / 1e18, task.rounds)
        self.state.tasks[task_id] = record
        try:
            record.staked_wei = self._stake(facts.stake_needed_wei)
        except ChainError as exc:
            record.status, record.reason = "failed", f"registration failed: {exc}"
            self.store.save(self.state)
            log.error("task %d: %s", task_id, record.reason)
            return
        record.status = "joined"
        record.joined_block = self.chain.block_number()
        self.store.save(self.state)
        self._start_processes(record, task)

    def supervise(self, run: Running) -> None:
        task = self._chain_task(self._published(run.record.task_id) or {"taskId": run.record.task_id})
        if task.status != ACTIVE:
            self._finish(run.record, task)
            return
        run.processes.poll()
        if run.processes.restarts != run.record.supernode_restarts:
            run.record.supernode_restarts = run.processes.restarts
            run.record.child_pids = run.processes.pids()
            self.store.save(self.state)
        self._reveal_if_needed(run)

    # -- chain facts -------------------------------------------------------------------------------
    def _published(self, task_id: int) -> dict[str, Any] | None:
        rows = self.client.events("TaskPublished", taskId=task_id)
        return rows[0] if rows else None

    def _chain_task(self, published: dict[str, Any]) -> ChainTask:
        raw = self.client.task(int(published["taskId"]))
        return ChainTask.from_chain(published, raw, self.chain.chain_id, self.client.address)

    def _my_stake(self) -> tuple[bool, int]:
        try:
            info = self.client.miner(self.account.address)
        except (ChainError, ValueError, KeyError):
            return False, 0
        return bool(info.get("registered", False)), int(info.get("stake", 0))

    def _facts(self, task: ChainTask) -> MinerFacts:
        spec, spec_error, model_error = None, "", ""
        try:
            spec, _ = self.blobs.fetch_spec(task.metadata_hash)
        except StoreError as exc:
            spec_error = str(exc)
        try:
            self.blobs.fetch_model(task.model_hash)
        except StoreError as exc:
            model_error = str(exc)
        manifest = None
        path = self.cfg.data_dir / "manifest.json"
        if path.exists():
            try:
                manifest = json.loads(path.read_text())
            except ValueError:
                manifest = None
        registered, stake = self._my_stake()
        want = max(self.cfg.stake_wei, task.min_stake_wei) if not registered else max(0, task.min_stake_wei - stake)
        return MinerFacts(manifest=manifest, keys_present=True, balance_wei=self.chain.balance(self.account.address),
                          stake_needed_wei=want, now=self.chain.timestamp(), spec=spec, spec_error=spec_error,
                          model_error=model_error)

    def _stake(self, amount: int) -> int:
        """Register (first time) or top up the stake with this miner's own transaction."""
        registered, _ = self._my_stake()
        if not registered:
            self.client.register_miner(self.account, self.identity.secagg_public, amount)
            log.info("registered %s with a stake of %.4f ETH", self.account.address, amount / 1e18)
        elif amount > 0:
            self.client.add_stake(self.account, amount)
            log.info("added %.4f ETH of stake", amount / 1e18)
        self.state.registered = True
        return amount

    # -- processes -----------------------------------------------------------------------------------
    def _start_processes(self, record: TaskRecord, task: ChainTask, adopt: list[int] | None = None) -> None:
        slot = len(self.running)
        settings = self.cfg.supernode
        settings = SuperNodeSettings(settings.superlink, settings.runtime_port + 2 * slot, settings.insecure,
                                     settings.root_certificates, settings.auth_private_key, settings.max_retries)
        node_config: dict[str, str | int] = {"data-dir": str(self.cfg.data_dir.resolve()),
                                             "key-dir": str((self.cfg.miner_dir / "keys").resolve()),
                                             "task-spec-hash": task.metadata_hash.hex(),  # the only spec it trusts
                                             "num-threads": self.cfg.threads}
        procs = TaskProcesses(record.task_id, settings, node_config, self.cfg.allowed_fab_hashes,
                              self.cfg.miner_dir / "logs", self.cfg.supernode_backoff_s,
                              self.cfg.supernode_max_backoff_s, flwr_home=self.cfg.miner_dir / "flwr")
        spec = None
        with contextlib.suppress(StoreError):
            spec, _ = self.blobs.fetch_spec(task.metadata_hash)
        publisher = spec.publisher_public if spec is not None else b""
        key = task_key(Domain(self.chain.chain_id, self.client.address), record.task_id, publisher)
        if adopt:
            procs.adopt_or_start(adopt)
        else:
            procs.start()
        record.status = "running"
        record.child_pids = procs.pids()
        self.store.save(self.state)
        self.running[record.task_id] = Running(record, procs, task, key)

    def _finish(self, record: TaskRecord, task: ChainTask) -> None:
        run = self.running.pop(record.task_id, None)
        if run is not None:
            run.processes.stop()
        outcome = {COMPLETED: "completed", CANCELLED: "cancelled"}.get(task.status, f"status {task.status}")
        log.info("task %d is over (%s)", record.task_id, outcome)
        if self.cfg.claim:
            self._claim(record)
        record.status = "finished"
        self.store.save(self.state)

    def _claim(self, record: TaskRecord) -> None:
        try:
            pending = self.client.pending_rewards(record.task_id, self.account.address)
        except ChainError as exc:
            log.warning("task %d: cannot read rewards (%s); will retry", record.task_id, exc)
            return
        if pending <= 0:
            log.info("task %d: no reward to claim", record.task_id)
            return
        amount = self.client.claim(self.account, [record.task_id])
        record.rewards_claimed_wei += amount
        log.info("task %d: claimed %.6f ETH", record.task_id, amount / 1e18)

    def _reveal_if_needed(self, run: Running) -> None:
        """Reveal this miner's score itself when the round is in its reveal phase, this miner
        committed, and the server has not relayed the reveal within ``reveal_grace_s``."""
        try:
            rs = self.client.round_state(run.record.task_id)
            if int(rs.get("phase", -1)) != REVEALING:
                return
            mine = self.client.miner_round(run.record.task_id, self.account.address)
        except (ChainError, KeyError, ValueError):
            return
        flags = int(mine.get("flags", 0))
        round_ = int(rs.get("round", 0))
        if not flags & FLAG_COMMITTED or flags & FLAG_REVEALED or round_ in run.record.reveals_sent:
            return
        first = run.reveal_seen_at.setdefault(round_, time.monotonic())
        if time.monotonic() - first < self.cfg.reveal_grace_s:
            return
        from fl_client.secure_update import MinerState

        opening = MinerState(self.cfg.data_dir, run.key).openings().get(round_)
        if opening is None:
            log.warning("task %d round %d: committed but no opening stored; cannot reveal", run.record.task_id, round_)
            run.record.reveals_sent.append(round_)
            return
        try:
            self.client.reveal(self.account, run.record.task_id, round_, opening.score, opening.nonce)
            log.info("task %d round %d: the server did not relay my reveal; revealed directly", run.record.task_id,
                     round_)
        except ChainError as exc:
            log.warning("task %d round %d: direct reveal failed: %s", run.record.task_id, round_, exc)
        run.record.reveals_sent.append(round_)
        self.store.save(self.state)


def identity_or_error(folder: Path) -> MinerIdentity:
    try:
        return load_identity(folder)
    except IdentityError as exc:
        raise SystemExit(f"error: {exc}") from exc
