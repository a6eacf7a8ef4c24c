"""Publish a ModelMine task, follow it, cancel it: the task publisher's tool.

    python scripts/publish_task.py publish --rpc-url http://127.0.0.1:8545 --contract 0x... \\
        --publisher-key-file publisher/eth.key --store-url http://127.0.0.1:8470 \\
        --aggregator 0x... --aggregator-secagg-public 02ab... --publisher-secagg-public 03cd... \\
        --dataset digits --model mlp --rounds 2 --reward-eth 1 --secret-out publisher/task.secret.json
    python scripts/publish_task.py status --rpc-url ... --contract 0x... --task-id 1
    python scripts/publish_task.py cancel --rpc-url ... --contract 0x... --task-id 1 --publisher-key-file ...
    python scripts/publish_task.py reveal --rpc-url ... --contract 0x... --task-id 1 --publisher-key-file ... \\
        --secret publisher/task.secret.json

``publish`` builds the initial model (architecture + kwargs, seeded) or loads one (``--initial-model``,
safetensors only), writes the task spec (aggregator.task_spec.TaskSpec, canonical JSON), uploads both
to the model store by content hash, and posts the task on chain with the reward escrow; the chain
stores the model hash and ``metadataHash = keccak256(spec)``, which miners check before joining.
The target accuracy is committed hidden (keccak of target and a random nonce); the nonce goes to
``--secret-out`` (0600) for ``reveal`` at the end. Prints the task id and a status table.

The publisher's Ethereum key comes from ``--publisher-key-file`` (hex, mode 0600) or the environment
variable named by ``--publisher-key-env`` (default MODELMINE_PUBLISHER_KEY); it is never printed.
Every transaction is signed locally, so any JSON-RPC node works (no unlocked accounts needed).
This tool imports neither fl_server nor fl_client: it talks to the store with ``requests``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eth_utils import keccak, to_checksum_address  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from aggregator.datasets import get_spec  # noqa: E402
from aggregator.models import (  # noqa: E402
    ModelError,
    ModelSpec,
    build_model,
    model_hash,
    num_parameters,
    state_from_bytes,
    state_to_bytes,
)
from aggregator.task_spec import TaskSpec, TaskSpecError  # noqa: E402
from contracts import client as mm_client  # noqa: E402
from contracts.chain import Chain, ChainConfig, ChainError, load_account  # noqa: E402
from contracts.client import ModelMineClient, target_commitment  # noqa: E402

DEFAULT_KEY_ENV = "MODELMINE_PUBLISHER_KEY"
STATUS = {0: "none", 1: "active", 2: "completed", 3: "cancelled"}
PHASES = {0: "idle", 1: "commit", 2: "voting", 3: "revealing"}
BACKEND_CODES = {"none": 0, "masked": 1, "nddfe": 2, "secaggplus": 3}


class PublishError(RuntimeError):
    """A publishing step that cannot proceed; the message says what to fix."""


def _hex_bytes(text: str, what: str, length: int) -> bytes:
    value = text.strip()
    if value.startswith("@"):
        value = Path(value[1:]).read_text().strip()
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError as exc:
        raise PublishError(f"{what} is not hex") from exc
    if len(raw) != length:
        raise PublishError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def connect(rpc_url: str, contract: str) -> ModelMineClient:
    if not rpc_url.startswith(("http://", "https://")):
        raise PublishError(f"--rpc-url must be an http(s) URL, got {rpc_url!r}")
    chain = Chain(ChainConfig(backend="rpc", rpc_url=rpc_url))
    return ModelMineClient(chain, to_checksum_address(contract))


def publisher_account(args: argparse.Namespace) -> Any:
    account = load_account(args.publisher_key_file or "", "" if args.publisher_key_file else args.publisher_key_env)
    if account is None:
        raise PublishError(f"no publisher key: give --publisher-key-file or set {args.publisher_key_env}")
    return account


def upload(store_url: str, kind: str, data: bytes, token: str | None) -> str:
    digest = keccak(data).hex()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = requests.put(f"{store_url.rstrip('/')}/{kind}/{digest}", data=data, headers=headers, timeout=60)
    if resp.status_code not in (200, 201):
        raise PublishError(f"model store refused {kind}/{digest}: HTTP {resp.status_code} {resp.text.strip()}")
    return digest


def initial_model(args: argparse.Namespace) -> tuple[bytes, ModelSpec, int]:
    """(safetensors bytes, model spec, parameter count): built from the seed, or loaded and checked."""
    ds = get_spec(args.dataset)
    kwargs: dict[str, Any] = {"in_channels": ds.in_channels, "image_size": ds.image_size, "num_classes": ds.num_classes}
    kwargs.update(json.loads(args.model_kwargs))
    spec = ModelSpec(args.model, kwargs)
    model = build_model(spec, seed=args.seed)
    if args.initial_model:
        data = Path(args.initial_model).read_bytes()
        state = state_from_bytes(data)  # safetensors only; a pickle raises ModelError
        from aggregator.models import load_state_checked

        load_state_checked(model, state)
    data = state_to_bytes(model.state_dict())
    return data, spec, num_parameters(model)


def chain_task_params(fields: dict[str, Any]) -> Any:
    """contracts.client.TaskSpec from whatever fields this checkout's client declares."""
    known = {f.name for f in dataclasses.fields(mm_client.TaskSpec)}
    return mm_client.TaskSpec(**{k: v for k, v in fields.items() if k in known})


def publish(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    client = connect(args.rpc_url, args.contract)
    publisher = publisher_account(args)
    token = Path(args.store_token_file).read_text().strip() if args.store_token_file else None
    model_bytes, mspec, d = initial_model(args)
    nonce = secrets.token_bytes(32)
    target_bps = int(round(args.target_accuracy * 10_000))
    commitment = target_commitment(target_bps, nonce)
    chain = client.chain
    deadline = chain.timestamp() + args.duration_s
    predicted_id = client.task_count() + 1
    fee_bps = 0
    try:
        fee_bps = int(chain.call(client.contract.functions.feeBps()))
    except Exception:  # noqa: BLE001 - older contracts have no public getter
        fee_bps = 0
    try:
        spec = TaskSpec(
            chain_id=chain.chain_id, verifying_contract=client.address, task_id=predicted_id,
            publisher_public=_hex_bytes(args.publisher_secagg_public, "--publisher-secagg-public", 33),
            aggregator_public=_hex_bytes(args.aggregator_secagg_public, "--aggregator-secagg-public", 33),
            backend=args.backend, bits=args.bits, clip=float(args.clip), d=d, support_mode=args.support,
            density=float(args.density), warmup_rounds=args.warmup_rounds, warmup_start=float(args.warmup_start),
            warmup_factor=float(args.warmup_factor), threshold=args.threshold, model_hash=model_hash(model_bytes),
            dataset=args.dataset, rounds=args.rounds, architecture=mspec.name,
            model_kwargs=json.dumps(mspec.kwargs, sort_keys=True, separators=(",", ":")),
            min_samples=args.min_samples, epochs=args.epochs, batch_size=args.batch_size, lr=float(args.lr),
            optimizer=args.optimizer, momentum=float(args.momentum), weight_decay=float(args.weight_decay),
            explore_fraction=float(args.explore_fraction), deadline=deadline, round_window_s=args.round_window_s,
            reward_wei=args.reward_wei, fee_bps=fee_bps, aggregator_share_bps=args.aggregator_share_bps,
            quorum_bps=args.quorum_bps, aggregator=to_checksum_address(args.aggregator),
            target_commitment=commitment, seed=args.seed,
        )
    except TaskSpecError as exc:
        raise PublishError(f"task spec: {exc}") from exc
    spec_bytes = spec.to_canonical_json().encode()
    model_digest = upload(args.store_url, "models", model_bytes, token)
    spec_digest = upload(args.store_url, "specs", spec_bytes, token)
    params = chain_task_params(dict(
        model_hash=model_hash(model_bytes), metadata_hash=spec.spec_hash(),
        publisher_key=spec.publisher_public, aggregator_key=spec.aggregator_public,
        aggregator=spec.aggregator, rounds=args.rounds, deadline=deadline, target_bps=target_bps,
        target_nonce=nonce, dataset_type=args.dataset, round_window_s=args.round_window_s,
        commit_window_s=args.commit_window_s, aggregator_share_bps=args.aggregator_share_bps,
        quorum_bps=args.quorum_bps, quant_bits=args.bits, k=max(spec.k_at(r) for r in range(1, args.rounds + 1)),
        clip=float(args.clip), secagg_backend=args.backend, support_mode=args.support, threshold=args.threshold,
        voter_share_bps=args.voter_share_bps,
    ))
    task_id, tx = client.publish_task(publisher, params, args.reward_wei)
    if task_id != predicted_id:
        client.cancel_task(publisher, task_id)
        raise PublishError(f"another task took id {predicted_id} meanwhile (ours got {task_id}, now cancelled); "
                           "run publish again")
    secret = {"task_id": task_id, "contract": client.address, "target_bps": target_bps, "nonce": nonce.hex(),
              "spec_hash": spec_digest, "model_hash": model_digest}
    if args.secret_out:
        path = Path(args.secret_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(secret, fh)
    result = {"task_id": task_id, "contract": client.address, "model_hash": "0x" + model_digest,
              "spec_hash": "0x" + spec_digest, "reward_wei": args.reward_wei, "rounds": args.rounds,
              "deadline": deadline, "publish_gas": int(tx.gas_used), "publisher": publisher.address}
    console.print(f"published task [bold]{task_id}[/bold] on {client.address} (gas {tx.gas_used:,})")
    print_status(client, task_id, console)
    return result


def task_status(client: ModelMineClient, task_id: int) -> dict[str, Any]:
    task = client.task(task_id)
    if int(task.get("status", 0)) == 0:
        raise PublishError(f"task {task_id} does not exist on {client.address}")
    out: dict[str, Any] = {"task_id": task_id, "status": STATUS.get(int(task["status"]), str(task["status"]))}
    for key in ("rounds", "finalizedRounds", "startedRounds", "deadline", "pool", "released", "publisher",
                "aggregator", "bestAccuracyBps", "targetRevealed"):
        if key in task:
            out[key] = task[key]
    for key in ("modelHash", "metadataHash"):
        if key in task:
            out[key] = "0x" + bytes(task[key]).hex()
    try:
        rs = client.round_state(task_id)
        out["round"] = int(rs.get("round", 0))
        out["attempt"] = int(rs.get("attempt", rs.get("epoch", 0)))
        out["phase"] = PHASES.get(int(rs.get("phase", -1)), str(rs.get("phase")))
        for key in ("participants", "votes", "accepts", "reveals"):
            if key in rs:
                out[key] = int(rs[key])
    except (ChainError, KeyError, ValueError):
        pass
    return out


def print_status(client: ModelMineClient, task_id: int, console: Console) -> dict[str, Any]:
    status = task_status(client, task_id)
    table = Table(title=f"task {task_id} on {client.address}")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in status.items():
        shown = f"{int(value) / 1e18:.6f} ETH" if key in ("pool", "released") else str(value)
        table.add_row(key, shown)
    console.print(table)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, key: bool) -> None:
        p.add_argument("--rpc-url", required=True, help="JSON-RPC node")
        p.add_argument("--contract", required=True, help="ModelMine contract address")
        p.add_argument("--json", help="also write the result as JSON to this path")
        if key:
            p.add_argument("--publisher-key-file", help="file holding the publisher's hex private key (0600)")
            p.add_argument("--publisher-key-env", default=DEFAULT_KEY_ENV, help="env var holding it instead")

    pub = sub.add_parser("publish", help="upload model and spec, publish on chain with the escrow")
    common(pub, True)
    pub.add_argument("--store-url", required=True, help="model store base URL")
    pub.add_argument("--store-token-file", help="bearer token for the store's uploads")
    pub.add_argument("--aggregator", required=True, help="the aggregator's Ethereum address")
    pub.add_argument("--aggregator-secagg-public", required=True, help="33-byte hex (or @file)")
    pub.add_argument("--publisher-secagg-public", required=True, help="33-byte hex (or @file) of the key service")
    pub.add_argument("--dataset", default="mnist")
    pub.add_argument("--min-samples", type=int, default=1)
    pub.add_argument("--model", default="cnn_small")
    pub.add_argument("--model-kwargs", default="{}", help="JSON object of constructor kwargs")
    pub.add_argument("--initial-model", help="safetensors weights to start from (default: built from --seed)")
    pub.add_argument("--seed", type=int, default=42)
    pub.add_argument("--rounds", type=int, default=10)
    pub.add_argument("--reward-wei", type=int, default=10**18)
    pub.add_argument("--duration-s", type=int, default=7 * 24 * 3600, help="deadline = now + this")
    pub.add_argument("--round-window-s", type=int, default=3600)
    pub.add_argument("--commit-window-s", type=int, default=3600)
    pub.add_argument("--aggregator-share-bps", type=int, default=1000)
    pub.add_argument("--voter-share-bps", type=int, default=1000)
    pub.add_argument("--quorum-bps", type=int, default=5000)
    pub.add_argument("--target-accuracy", type=float, default=0.98)
    pub.add_argument("--secret-out", help="where to keep the target's nonce (0600) for `reveal`")
    pub.add_argument("--backend", default="masked", choices=sorted(BACKEND_CODES))
    pub.add_argument("--bits", type=int, default=15)
    pub.add_argument("--clip", type=float, default=0.5)
    pub.add_argument("--density", type=float, default=0.05)  # the defaults of conf/dgc/default.yaml
    pub.add_argument("--support", default="shared", choices=["shared", "local"])
    pub.add_argument("--warmup-rounds", type=int, default=10)
    pub.add_argument("--warmup-start", type=float, default=0.25)
    pub.add_argument("--warmup-factor", type=float, default=0.7)
    pub.add_argument("--explore-fraction", type=float, default=0.5)
    pub.add_argument("--threshold", type=int, default=2)
    pub.add_argument("--epochs", type=int, default=1)
    pub.add_argument("--batch-size", type=int, default=32)
    pub.add_argument("--lr", type=float, default=0.05)
    pub.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    pub.add_argument("--momentum", type=float, default=0.9)
    pub.add_argument("--weight-decay", type=float, default=0.0)

    st = sub.add_parser("status", help="print the task's state")
    common(st, False)
    st.add_argument("--task-id", type=int, required=True)
    ca = sub.add_parser("cancel", help="cancel (rounds never started are refunded)")
    common(ca, True)
    ca.add_argument("--task-id", type=int, required=True)
    rv = sub.add_parser("reveal", help="open the hidden target accuracy at the end")
    common(rv, True)
    rv.add_argument("--task-id", type=int, required=True)
    rv.add_argument("--secret", required=True, help="the --secret-out file of publish")

    args = parser.parse_args(argv)
    console = Console(width=120)
    try:
        if args.command == "publish":
            if args.rounds <= 0 or args.reward_wei <= 0:
                raise PublishError("--rounds and --reward-wei must be > 0")
            try:
                json.loads(args.model_kwargs)
            except ValueError as exc:
                raise PublishError(f"--model-kwargs is not JSON: {exc}") from exc
            result = publish(args, console)
        elif args.command == "status":
            result = print_status(connect(args.rpc_url, args.contract), args.task_id, console)
        elif args.command == "cancel":
            client = connect(args.rpc_url, args.contract)
            tx = client.cancel_task(publisher_account(args), args.task_id)
            console.print(f"task {args.task_id} cancelled (gas {tx.gas_used:,})")
            result = print_status(client, args.task_id, console)
        else:
            client = connect(args.rpc_url, args.contract)
            secret = json.loads(Path(args.secret).read_text())
            if int(secret["task_id"]) != args.task_id:
                raise PublishError(f"{args.secret} belongs to task {secret['task_id']}, not {args.task_id}")
            client.reveal_target(publisher_account(args), args.task_id, int(secret["target_bps"]),
                                 bytes.fromhex(secret["nonce"]))
            console.print(f"task {args.task_id}: target {int(secret['target_bps']) / 100:.2f}% revealed")
            result = print_status(client, args.task_id, console)
    except (PublishError, ChainError, ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
