"""The aggregator on the deployment engine: attach to a task someone else published.

In deployment the publisher posts the task (scripts/publish_task.py) and runs its key service
(scripts/key_service.py) in its own process; the server holds only the aggregator's keys. The run
config names them (``flwr run ... --run-config``; ``cfg.deployment.*`` in the ServerApp):

- ``chain_rpc_url``, ``contract_address``, ``task_id``: the published task;
- ``aggregator_key_file``: the aggregator's Ethereum key (hex, 0600). Next to it, in the same
  folder: ``aggregator_secagg.key`` (secure-aggregation secret, hex, 0600) and
  ``key_service.credential`` (the HMAC credential shared with the publisher's key service);
- ``model_store_url``: where the task's spec and initial model are, and where each round's
  candidate is uploaded before it is proposed (upload token: $MODELMINE_STORE_TOKEN_FILE);
- ``key_service_url``: the publisher's key service.

:func:`attach` checks that the account is the task's aggregator, that the published spec (fetched
from the store by the chain's ``metadataHash``) is genuine, and that the server's configured model
is the published initial model; the ServerApp then pins its secure rounds to the published spec
(:meth:`Deployment.pin`) so miners, who trust only that hash, accept its plans.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from aggregator.models import model_hash, state_to_bytes
from aggregator.secagg import AggregatorKeys
from aggregator.task_spec import TaskSpec, TaskSpecError
from contracts.chain import Chain, ChainConfig
from contracts.client import ModelMineClient
from fl_server.chain_round import ChainSession
from fl_server.model_store import upload_blob

log = logging.getLogger("modelmine.deployment")


class DeploymentError(RuntimeError):
    """The deployment settings do not describe a task this server can aggregate (names the fix)."""


@dataclass(frozen=True)
class PublicKeyOnly:
    """The publisher's secure-aggregation key as the server knows it: the public part only."""

    public: bytes


@dataclass
class DeploymentSecrets:
    """What build_secure_round needs (same attribute names as fl_server.checkpoint.ServerSecrets),
    without the publisher's secret: functional keys come from the remote key service."""

    publisher: PublicKeyOnly
    aggregator_keys: AggregatorKeys = field(repr=False)
    credential: bytes = field(repr=False)


@dataclass
class Deployment:
    session: ChainSession
    secrets: DeploymentSecrets
    spec: TaskSpec
    spec_bytes: bytes = field(repr=False)
    store_url: str

    def pin(self, secure: Any) -> None:
        """Make the secure round announce exactly the published spec; refuse when the server's
        settings differ from it (miners would refuse every plan otherwise)."""
        own = secure.task_spec
        for name in ("backend", "bits", "clip", "d", "support_mode", "density", "warmup_rounds", "warmup_start",
                     "warmup_factor", "threshold", "task_id", "chain_id", "publisher_public", "aggregator_public"):
            mine, theirs = getattr(own, name), getattr(self.spec, name)
            if isinstance(mine, str) and isinstance(theirs, str):
                mine, theirs = mine.lower(), theirs.lower()
            if mine != theirs:
                raise DeploymentError(f"server setting {name}={mine!r} differs from the published task's {theirs!r}; "
                                      "run with the task's settings")
        secure.__dict__["task_spec"] = self.spec  # cached_property: the published spec from now on

    def upload_candidate(self, data: bytes) -> None:
        digest = upload_blob(self.store_url, "models", data)
        log.info("candidate %s… uploaded to the model store", digest[:12])


class AttachedSession(ChainSession):
    """A ChainSession without the publisher's account: the publisher reveals its target itself
    (``publish_task.py reveal``); the aggregator only reports and pulls its own share."""

    def finish(self, miners: Any) -> dict[str, Any]:
        task = self.client.task(self.task_id)
        owed = {m: self.client.pending_rewards(self.task_id, m) for m in miners}
        summary: dict[str, Any] = {
            "task_id": self.task_id, "contract": self.client.address,
            "finalized_rounds": int(task["finalizedRounds"]), "task_status": int(task["status"]),
            "model_hash_onchain": "0x" + bytes(task.get("modelHash", b"")).hex(),
            "miner_rewards_eth": {m: w / 1e18 for m, w in owed.items()},
            "miner_rewards_total_eth": sum(owed.values()) / 1e18,
        }
        try:
            summary["aggregator_claimed_eth"] = self.client.claim(self.aggregator) / 1e18
        except Exception as exc:  # noqa: BLE001 - nothing owed yet is not a failure of the run
            log.info("aggregator claim: %s", exc)
            summary["aggregator_claimed_eth"] = 0.0
        return summary


def _secret_hex(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise DeploymentError(f"{what}: {path} does not exist")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise DeploymentError(f"{what}: {path} is readable by others (mode {oct(mode)}); run chmod 600 {path}")
    try:
        return bytes.fromhex(path.read_text().strip().removeprefix("0x"))
    except ValueError as exc:
        raise DeploymentError(f"{what}: {path} is not hex") from exc


def enabled(cfg: Any) -> bool:
    dep = cfg.get("deployment") if hasattr(cfg, "get") else None
    return bool(dep is not None and str(dep.get("task_id", "") or ""))


def attach(cfg: Any, initial_state: dict[str, Any], tolerance: float) -> Deployment:
    """Attach to ``cfg.deployment``'s task as its aggregator (see the module docstring)."""
    dep = cfg.deployment
    try:
        task_id = int(str(dep.task_id))
    except ValueError as exc:
        raise DeploymentError(f"deployment.task_id must be an integer, got {dep.task_id!r}") from exc
    key_file = Path(str(dep.aggregator_key_file or ""))
    if not str(dep.aggregator_key_file or ""):
        raise DeploymentError("deployment.aggregator_key_file is required with deployment.task_id")
    folder = key_file.parent
    eth = _secret_hex(key_file, "aggregator key")
    secagg = _secret_hex(folder / "aggregator_secagg.key", "aggregator secure-aggregation key")
    credential = _secret_hex(folder / "key_service.credential", "key service credential")
    if len(eth) != 32 or len(secagg) != 32 or len(credential) < 32:
        raise DeploymentError(f"keys in {folder}: eth and secagg keys must be 32 bytes, the credential >= 32")
    aggregator: LocalAccount = Account.from_key(eth)
    chain_cfg = ChainConfig.from_mapping({**dict(cfg.chain), "backend": "rpc", "rpc_url": str(dep.chain_rpc_url),
                                          "start_anvil": False})
    client = ModelMineClient(Chain(chain_cfg), to_checksum_address(str(dep.contract_address)))
    task = client.task(task_id)
    if int(task.get("status", 0)) == 0:
        raise DeploymentError(f"task {task_id} does not exist on {client.address}")
    if to_checksum_address(task["aggregator"]) != aggregator.address:
        raise DeploymentError(f"{key_file} holds {aggregator.address}, but task {task_id}'s aggregator is "
                              f"{task['aggregator']}")
    published = client.events("TaskPublished", taskId=task_id)
    if not published:
        raise DeploymentError(f"no TaskPublished event for task {task_id} (node without logs?)")
    metadata_hash = bytes(published[0]["metadataHash"])
    initial_hash = bytes(published[0]["modelHash"])
    store_url = str(dep.model_store_url or "").rstrip("/")
    if not store_url:
        raise DeploymentError("deployment.model_store_url is required with deployment.task_id")
    resp = requests.get(f"{store_url}/specs/{metadata_hash.hex()}", timeout=30)
    if resp.status_code != 200 or keccak(resp.content) != metadata_hash:
        raise DeploymentError(f"the task spec {metadata_hash.hex()} is not in the store at {store_url}")
    try:
        spec = TaskSpec.from_json(resp.content)
    except TaskSpecError as exc:
        raise DeploymentError(f"published task spec is malformed: {exc}") from exc
    if model_hash(state_to_bytes(initial_state)) != initial_hash:
        raise DeploymentError("the server's initial model differs from the published one (model, kwargs or seed "
                              "differ from the task spec)")
    keys = AggregatorKeys.from_secret(secagg)
    if bytes(keys.public) != spec.aggregator_public:
        raise DeploymentError("aggregator_secagg.key does not match the task's aggregator key")
    session = AttachedSession(client, task_id, None, aggregator, 0, b"", tolerance)  # type: ignore[arg-type]
    secrets = DeploymentSecrets(PublicKeyOnly(spec.publisher_public), keys, credential)
    log.info("attached to task %d on %s as its aggregator %s", task_id, client.address, aggregator.address)
    return Deployment(session, secrets, spec, resp.content, store_url)
