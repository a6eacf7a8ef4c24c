"""A whole ModelMine network on this machine, as separate processes talking over loopback.

    python scripts/local_network.py up --miners 3 --rounds 2 --wait --json outputs/network.json
    python scripts/local_network.py down

``up`` starts, each as its own process with its own keys:

1. anvil (npm @foundry-rs/anvil) on 127.0.0.1; the ModelMine contract is deployed by a fresh
   deployer account. Anvil's prefunded dev accounts are used only here, to give ether to the
   deployer, the publisher, the aggregator and the miners: no role ever uses an unlocked account.
2. the model store (``python -m fl_server.model_store``), with an upload token;
3. the publisher's key service (``scripts/key_service.py serve``), holding the publisher's
   secure-aggregation secret that the server never sees;
4. ``flower-superlink --insecure`` on 127.0.0.1;
5. the task, published by ``scripts/publish_task.py publish`` with the publisher's key;
6. N miner daemons (``python -m fl_client``), each with its own keys, data partition, state folder
   and SuperNode runtime port; each validates the task, stakes with its own transaction and starts
   its SuperNode with the app guard (only this network's ClientApp FAB may run);
7. the run: ``flwr run <app snapshot> local-deployment`` with the deployment settings in the run
   config (the ServerApp attaches to the published task as its aggregator).

Everything lands in a run folder (``outputs/network/<date>-<time>/``, or ``--run-dir``):
``network.json`` (pids, ports, addresses), one log per process under ``logs/``, keys under
``publisher/``, ``aggregator/``, ``miners/m<i>/keys``. ``down`` reads ``network.json`` of the latest
(or ``--run-dir``) network and stops exactly those PIDs (SIGTERM to each process group, SIGKILL
after a grace period).

``--wait`` follows the task to its end, printing rounds, votes and rewards as the chain records
them, waits for every daemon to claim, and (``--json``) writes ``rounds_finalized``,
``model_hash_onchain``, ``model_hash_server``, ``model_hash_store_ok``, ``rewards_wei`` (per miner
address), ``wall_seconds``, ``round_seconds``, ``peak_rss_mb_per_miner`` (daemon + SuperNode + app
guard + ClientApp processes of each miner) and ``down`` stops the network unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VENV_BIN = Path(sys.executable).parent
ANVIL = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
NETWORK_ROOT = REPO / "outputs" / "network"
STATE_FILE = "network.json"


class NetworkError(RuntimeError):
    """A step of bringing the network up failed; the message names the process and its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["MODELMINE_ROOT"] = str(REPO)  # the ServerApp/ClientApp run from an extracted FAB copy
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if extra:
        env.update(extra)
    return env


def write_secret(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


@dataclass
class Network:
    """What ``up`` started (persisted as network.json so ``down`` can stop it by PID)."""

    run_dir: Path
    pids: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        data = {"run_dir": str(self.run_dir), "pids": self.pids, "info": self.info}
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.run_dir / STATE_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> Network:
        data = json.loads((run_dir / STATE_FILE).read_text())
        return cls(Path(data["run_dir"]), {k: int(v) for k, v in data["pids"].items()}, data["info"])

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_path = self.run_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or child_env(),
                                    start_new_session=True, cwd=str(REPO))
        self.pids[name] = proc.pid
        self.info.setdefault("argv", {})[name] = argv
        self.save()
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``name`` again with the argv it was first started with (daemons resume from their state)."""
        return self.spawn(name, list(self.info["argv"][name]))

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, name: str = "") -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NetworkError(f"{name} exited with code {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise NetworkError(f"{name or url} did not answer within {timeout:.0f} s")


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NetworkError(f"{name} exited with code {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise NetworkError(f"{name} did not listen on port {port} within {timeout:.0f} s")


# ---------------------------------------------------------------------------------------------- app FAB


def snapshot_app(dest: Path) -> str:
    """Copy the files of ModelMine's Flower App (as ``flwr run`` would pack them) into ``dest`` and
    return the sha256 of its FAB: the hash every miner's app guard allows. A snapshot keeps the hash
    stable while the checkout changes."""
    import hashlib

    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(REPO)
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(fab)) as zf:
        for name in zf.namelist():
            if name.startswith(".info/"):
                continue
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
    shutil.copy2(REPO / ".gitignore", dest / ".gitignore")
    digest = hashlib.sha256(build_fab_from_disk(dest)).hexdigest()
    return digest


# ---------------------------------------------------------------------------------------------- up


def start(args: argparse.Namespace) -> Started:
    """Bring the whole network up and launch the run (steps 0-8 of the module docstring)."""
    from eth_account import Account

    from aggregator.secagg import AggregatorKeys, PublisherKeys
    from contracts.chain import Chain, ChainConfig
    from contracts.client import ModelMineClient
    from fl_client.identity import create_identity

    t_start = time.monotonic()
    run_dir = Path(args.run_dir) if args.run_dir else NETWORK_ROOT / time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_dir.resolve()
    if (run_dir / STATE_FILE).exists():
        raise NetworkError(f"{run_dir} already holds a network; run `down --run-dir {run_dir}` or pick another")
    run_dir.mkdir(parents=True, exist_ok=True)
    net = Network(run_dir)
    (NETWORK_ROOT).mkdir(parents=True, exist_ok=True)
    (NETWORK_ROOT / "latest").write_text(str(run_dir))
    say = print
    ports = {"anvil": free_port(), "store": free_port(), "keys": free_port(), "superlink": free_port()}
    net.info.update(ports=ports, miners=args.miners, rounds=args.rounds, dataset=args.dataset, model=args.model)

    # 0. data partitions (each miner gets its own folder)
    data_root = run_dir / "data"
    subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--dataset", args.dataset,
                    "--miners", str(args.miners), "--seed", str(args.seed), "--out", str(data_root)],
                   check=True, env=child_env(), stdout=subprocess.DEVNULL)
    tag = f"iid-n{args.miners}-s{args.seed}"
    partitions = [data_root / args.dataset / tag / f"miner_{i}" for i in range(args.miners)]

    # 1. chain
    if not ANVIL.exists():
        raise NetworkError(f"anvil not found at {ANVIL}; run `bash scripts/setup.sh`")
    anvil = net.spawn("anvil", [str(ANVIL), "--host", "127.0.0.1", "--port", str(ports["anvil"]), "--chain-id",
                                "31337", "--hardfork", "cancun", "--accounts", "2", "--code-size-limit", "100000"])
    rpc = f"http://127.0.0.1:{ports['anvil']}"
    wait_port(ports["anvil"], 20, anvil, "anvil")
    chain = Chain(ChainConfig.from_mapping({"backend": "rpc", "rpc_url": rpc, "dev_chain": True}))  # funding only
    deployer = Account.create()
    chain.fund(deployer.address, 10**20)
    client = ModelMineClient.deploy(chain, deployer)
    say(f"chain: anvil {rpc}, ModelMine at {client.address}")

    # role keys, each in its own folder
    publisher, aggregator = Account.create(), Account.create()
    pub_dir, agg_dir = run_dir / "publisher", run_dir / "aggregator"
    write_secret(pub_dir / "eth.key", publisher.key.hex())
    write_secret(agg_dir / "eth.key", aggregator.key.hex())
    pub_secagg, agg_secagg = PublisherKeys.generate(), AggregatorKeys.generate()
    write_secret(pub_dir / "secagg.key", pub_secagg.secret.hex())
    write_secret(agg_dir / "aggregator_secagg.key", agg_secagg.secret.hex())
    credential = secrets.token_bytes(32).hex()
    write_secret(agg_dir / "key_service.credential", credential)
    write_secret(pub_dir / "key_service.credential", credential)
    store_token = secrets.token_hex(16)
    write_secret(run_dir / "store" / "upload.token", store_token)
    for account in (publisher, aggregator):
        chain.fund(account.address, 10**20)
    net.info.update(rpc_url=rpc, contract=client.address, from_block=client.from_block,
                    publisher=publisher.address, aggregator=aggregator.address)
    net.save()

    # 2. model store
    store = net.spawn("model_store", [sys.executable, "-m", "fl_server.model_store", "--root",
                                      str(run_dir / "store" / "blobs"), "--port", str(ports["store"]),
                                      "--upload-token-file", str(run_dir / "store" / "upload.token")])
    store_url = f"http://127.0.0.1:{ports['store']}"
    wait_http(f"{store_url}/health", 120, store, "model store")

    # 3. SuperLink
    superlink = net.spawn("superlink", [str(VENV_BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                        "--port", str(ports["superlink"]), "--database",
                                        str(run_dir / "superlink.db")],
                          env=child_env({"MODELMINE_STORE_TOKEN_FILE": str(run_dir / "store" / "upload.token"),
                                         "FLWR_HOME": str(run_dir / "flwr")}))
    wait_port(ports["superlink"], 120, superlink, "flower-superlink")
    superlink_addr = f"127.0.0.1:{ports['superlink']}"
    say(f"store {store_url}, SuperLink {superlink_addr}")

    # 4. publish the task
    pub_json = run_dir / "task.json"
    publish_argv = [
        sys.executable, str(REPO / "scripts" / "publish_task.py"), "publish", "--rpc-url", rpc, "--contract",
        client.address, "--publisher-key-file", str(pub_dir / "eth.key"), "--store-url", store_url,
        "--store-token-file", str(run_dir / "store" / "upload.token"), "--aggregator", aggregator.address,
        "--aggregator-secagg-public", agg_secagg.public.hex(), "--publisher-secagg-public", pub_secagg.public.hex(),
        "--dataset", args.dataset, "--model", args.model, "--model-kwargs", args.model_kwargs, "--rounds",
        str(args.rounds), "--reward-wei", str(args.reward_wei), "--seed", str(args.seed), "--backend", args.secagg,
        "--bits", str(args.bits), "--clip", str(args.clip), "--density", str(args.density), "--warmup-rounds",
        str(args.warmup_rounds), "--warmup-start", str(args.warmup_start), "--warmup-factor", str(args.warmup_factor),
        "--threshold", "2", "--min-samples", "10", "--round-window-s",
        str(args.round_window_s), "--commit-window-s", str(args.round_window_s), "--target-accuracy", "0.999",
        "--secret-out", str(pub_dir / "task.secret.json"), "--json", str(pub_json),
    ]
    res = subprocess.run(publish_argv, env=child_env(), capture_output=True, text=True)
    (run_dir / "logs" / "publish.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise NetworkError(f"publish_task failed: {res.stderr.strip() or res.stdout[-500:]}")
    task = json.loads(pub_json.read_text())
    task_id = int(task["task_id"])
    net.info.update(task_id=task_id, store_url=store_url, superlink=superlink_addr,
                    model_hash_initial=task["model_hash"], spec_hash=task["spec_hash"])
    net.save()
    say(f"task {task_id} published: {args.rounds} rounds, reward {args.reward_wei / 1e18:.4f} ETH, "
        f"model {task['model_hash'][:12]}…, spec {task['spec_hash'][:12]}…")

    # 5. the app this network runs, and N miner daemons
    app_dir = run_dir / "app"
    fab_hash = snapshot_app(app_dir)
    net.info["fab_sha256"] = fab_hash
    miners = []
    for i in range(args.miners):
        mdir = run_dir / "miners" / f"m{i}"
        identity = create_identity(mdir)  # the miner's own keys (mdir/keys, 0600)
        chain.fund(identity.address, 10**19)
        miners.append({"index": i, "address": identity.address, "dir": str(mdir), "data_dir": str(partitions[i]),
                       "runtime_port": free_port()})
    net.info["miners_info"] = miners
    net.save()
    for m in miners:
        argv = [sys.executable, "-m", "fl_client", "--config-name", "miner", f"miner.dir={m['dir']}",
                f"miner.data_dir={m['data_dir']}", f"chain.rpc_url={rpc}", f"chain.contract_address={client.address}",
                f"chain.from_block={client.from_block}", "chain.poll_interval_s=1.0", f"store.url={store_url}",
                f"supernode.superlink={superlink_addr}", "supernode.insecure=true",
                f"supernode.runtime_port={m['runtime_port']}", f"app.allowed_fab_hashes=[{fab_hash}]",
                "policy.reveal_grace_s=20", f"miner.threads={args.threads}"]
        net.spawn(f"miner{m['index']}", argv)
    say(f"{args.miners} miner daemons started (app FAB sha256 {fab_hash[:12]}…)")

    # the daemons register with their own stake; wait until all did
    deadline = time.monotonic() + args.start_timeout
    while True:
        registered = {e["miner"] for e in client.events("MinerRegistered")}
        if all(m["address"] in registered for m in miners):
            break
        for m in miners:
            name = f"miner{m['index']}"
            if _dead(net.pids[name]):
                raise NetworkError(f"{name} exited:\n{net.log_tail(name)}")
        if time.monotonic() > deadline:
            raise NetworkError(f"only {len(registered)} of {len(miners)} miners registered within "
                               f"{args.start_timeout} s; see {run_dir / 'logs'}")
        time.sleep(0.5)
    say(f"all {args.miners} miners registered and staked with their own transactions")

    # 7. the publisher's key service (after the miners registered: it reads their keys from the chain)
    ks_cfg = {
        "host": "127.0.0.1", "port": ports["keys"], "backend": args.secagg, "bits": args.bits,
        "threshold": 2, "ledger": str(pub_dir / "key_ledger.sqlite"),
        "publisher_key_file": str(pub_dir / "secagg.key"), "credential_file": str(pub_dir / "key_service.credential"),
        "chain": {"rpc_url": rpc, "contract": client.address},
    }
    (pub_dir / "key_service.json").write_text(json.dumps(ks_cfg, indent=2))
    keysvc = net.spawn("key_service", [sys.executable, str(REPO / "scripts" / "key_service.py"), "serve",
                                       "--config", str(pub_dir / "key_service.json")])
    wait_port(ports["keys"], 120, keysvc, "key service")
    key_service_url = f"http://127.0.0.1:{ports['keys']}"
    net.info["key_service_url"] = key_service_url
    say(f"key service {key_service_url}")

    # 8. the run
    flwr_home = run_dir / "flwr"
    subprocess.run([sys.executable, str(REPO / "scripts" / "flwr_config.py"), "--home", str(flwr_home),
                    "--deployment-address", superlink_addr], check=True, env=child_env(), stdout=subprocess.DEVNULL)
    server_dir = run_dir / "server"
    overrides = " ".join([
        f"dataset={args.dataset}", f"model={args.model}", f"num_miners={args.miners}", f"rounds={args.rounds}",
        f"seed={args.seed}", f"data_root={data_root}", "auto_prepare=false", f"secagg={args.secagg}",
        f"secagg.bits={args.bits}", f"secagg.clip={args.clip}", f"dgc.density={args.density}",
        f"dgc.warmup_rounds={args.warmup_rounds}", f"dgc.warmup_start={args.warmup_start}",
        f"dgc.warmup_factor={args.warmup_factor}", "chain=anvil", f"chain.rpc_url={rpc}", "chain.start_anvil=false", "++chain.dev_chain=true",
        f"chain.contract_address={client.address}", f"chain.round_window_s={args.round_window_s}",
        f"strategy.round_timeout_s={args.round_timeout_s}",
    ])
    run_config = " ".join([
        f"overrides={json.dumps(overrides)}", f'run-dir="{server_dir}"', f'chain-rpc-url="{rpc}"',
        f'contract-address="{client.address}"', f'task-id="{task_id}"',
        f'aggregator-key-file="{agg_dir / "eth.key"}"', f'model-store-url="{store_url}"',
        f'key-service-url="{key_service_url}"',
    ])
    flwr_env = child_env({"FLWR_HOME": str(flwr_home), "MODELMINE_STORE_TOKEN_FILE": str(run_dir / "store" / "upload.token")})
    net.spawn("flwr_run", [str(VENV_BIN / "flwr"), "run", str(app_dir), "local-deployment", "--stream",
                           "--run-config", run_config], env=flwr_env)
    net.info.update(server_dir=str(server_dir), started_s=round(time.monotonic() - t_start, 1))
    net.save()
    say(f"run launched: flwr run {app_dir.name} local-deployment (logs {run_dir / 'logs'})")
    say(f"stop everything with: python scripts/local_network.py down --run-dir {run_dir}")
    return Started(net, client, task_id, miners, t_start)


@dataclass
class Started:
    """A network that ``start`` brought up (handles for ``follow`` and for tests)."""

    net: Network
    client: Any
    task_id: int
    miners: list[dict[str, Any]]
    t_start: float


def up(args: argparse.Namespace) -> dict[str, Any]:
    """``start``; with ``--wait`` also ``follow`` to the end, write ``--json`` and stop the network."""
    started = start(args)
    result: dict[str, Any] = {"run_dir": str(started.net.run_dir), "task_id": started.task_id,
                              "contract": started.client.address}
    if args.wait:
        result |= follow(started.net, started.client, started.task_id, started.miners, args, started.t_start)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2))
            print(f"wrote {args.json}")
        if not args.keep:
            down_network(started.net)
    return result


def _dead(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---------------------------------------------------------------------------------------------- --wait


def _tree_rss(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def _miner_processes_rss(net: Network, miner: dict[str, Any]) -> float:
    """RSS (MB) of one miner: its daemon and everything under it (SuperNode, app guard, ClientApps)."""
    return _tree_rss(net.pids[f"miner{miner['index']}"])


def follow(net: Network, client: Any, task_id: int, miners: list[dict[str, Any]], args: argparse.Namespace,
           t_start: float) -> dict[str, Any]:
    """Print rounds, votes and rewards as the chain records them; wait for the end and the claims."""
    say = print
    seen: set[tuple[str, int, int]] = set()
    peak = {m["address"]: 0.0 for m in miners}
    peak_process = {m["address"]: 0.0 for m in miners}
    round_times: list[float] = []
    last_round_t = time.monotonic()
    deadline = time.monotonic() + args.timeout
    finished_at = None
    addr_name = {m["address"]: f"m{m['index']}" for m in miners}
    while True:
        import psutil

        for m in miners:
            peak[m["address"]] = max(peak[m["address"]], _miner_processes_rss(net, m))
            try:
                root = psutil.Process(net.pids[f"miner{m['index']}"])
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        peak_process[m["address"]] = max(peak_process[m["address"]], p.memory_info().rss / 2**20)
            except psutil.Error:
                pass
        for name in ("Voted", "RoundFinalized", "RoundRejected", "RoundSettled", "Claimed", "TaskCompleted",
                     "RoundExpired"):
            try:
                rows = client.events(name)
            except Exception:  # noqa: BLE001 - the node may be briefly unreachable; try next tick
                rows = []
            for row in rows:
                if "taskId" in row and int(row["taskId"]) != task_id:
                    continue
                key = (name, int(row["blockNumber"]), int(row["logIndex"]))
                if key in seen:
                    continue
                seen.add(key)
                if name == "Voted":
                    say(f"  vote  {addr_name.get(row['miner'], row['miner'][:10])}: "
                        f"{'accept' if row['accept'] else 'reject'} at {row['accuracyBps'] / 100:.2f}%")
                elif name == "RoundFinalized":
                    now = time.monotonic()
                    round_times.append(now - last_round_t)
                    last_round_t = now
                    say(f"round {row['round']} finalized (attempt {row['attempt']}): model "
                        f"0x{bytes(row['modelHash']).hex()[:12]}…, vote accuracy {row['accuracyBps'] / 100:.2f}%")
                elif name == "RoundRejected":
                    say(f"round {row['round']} rejected ({row['accepts']}/{row['votes']} accept)")
                elif name == "RoundSettled":
                    say(f"round {row['round']} settled: miners {row['minersPaid'] / 1e18:.6f} ETH, "
                        f"aggregator {row['aggregatorShare'] / 1e18:.6f} ETH, fee {row['fee'] / 1e18:.6f} ETH")
                elif name == "Claimed" and row["account"] in addr_name:
                    say(f"  claim {addr_name[row['account']]}: {row['amount'] / 1e18:.6f} ETH")
                elif name == "TaskCompleted":
                    say(f"task {task_id} completed after {row['finalizedRounds']} finalized rounds")
                elif name == "RoundExpired":
                    say(f"round {row['round']} attempt {row['attempt']} expired")
        task = client.task(task_id)
        over = int(task["status"]) != 1
        states = [_daemon_state(Path(m["dir"])) for m in miners]
        claimed_all = all(
            s.get("tasks", {}).get(str(task_id), {}).get("status") == "finished" for s in states
        )
        if over and finished_at is None:
            finished_at = time.monotonic()
        if over and claimed_all:
            break
        if net.pids.get("flwr_run") and _dead(net.pids["flwr_run"]) and not over:
            server_log = net.log_tail("flwr_run", 30)
            if "Traceback" in server_log or "error" in server_log.lower():
                raise NetworkError(f"the run ended before the task did:\n{server_log}")
        if time.monotonic() > deadline:
            raise NetworkError(f"the task did not finish within {args.timeout} s (status {task['status']}, "
                               f"{task.get('finalizedRounds')} rounds finalized); logs in {net.run_dir / 'logs'}")
        time.sleep(1.0)
    wall = time.monotonic() - t_start
    task = client.task(task_id)
    onchain = "0x" + bytes(task["modelHash"]).hex()
    server_hash = None
    summary_path = Path(net.info["server_dir"]) / "summary.json"
    for _ in range(30):  # the ServerApp writes its summary right after the last round
        if summary_path.exists():
            server_hash = json.loads(summary_path.read_text()).get("final_model_hash")
            break
        time.sleep(1)
    server_rounds = Path(net.info["server_dir"]) / "rounds.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        round_times = [float(r["round_seconds"]) for r in json.loads(server_rounds.read_text())]
    import requests

    store_ok = requests.get(f"{net.info['store_url']}/models/{onchain[2:]}", timeout=10).status_code == 200
    rewards = {}
    for m, s in zip(miners, [_daemon_state(Path(m["dir"])) for m in miners], strict=True):
        rewards[m["address"]] = int(s.get("tasks", {}).get(str(task_id), {}).get("rewards_claimed_wei", 0))
    result = {
        "miners": len(miners),
        "rounds": args.rounds,
        "rounds_finalized": int(task["finalizedRounds"]),
        "model_hash_onchain": onchain,
        "model_hash_server": server_hash,
        "model_hash_store_ok": store_ok,
        "rewards_wei": rewards,
        "wall_seconds": round(wall, 1),
        "setup_seconds": net.info.get("started_s"),
        "round_seconds": [round(t, 1) for t in round_times],
        "mean_round_seconds": round(sum(round_times) / len(round_times), 1) if round_times else None,
        "peak_rss_mb_per_miner": {a: round(v, 1) for a, v in peak.items()},
        "peak_rss_mb_per_miner_process": {a: round(v, 1) for a, v in peak_process.items()},
    }
    say(f"done: {result['rounds_finalized']}/{args.rounds} rounds finalized, wall {wall:.0f} s, "
        f"model on chain {onchain[:14]}… {'==' if server_hash == onchain else '!='} server's, in store: {store_ok}")
    for m in miners:
        say(f"  m{m['index']} {m['address']}: claimed {rewards[m['address']] / 1e18:.6f} ETH, "
            f"peak RSS {peak[m['address']]:.0f} MB (all its processes), {peak_process[m['address']]:.0f} MB (largest)")
    return result


def _daemon_state(miner_dir: Path) -> dict[str, Any]:
    path = miner_dir / "daemon" / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------- down


STOP_ORDER = ("flwr_run", "miner", "superlink", "key_service", "model_store", "anvil")


def down_network(net: Network, grace: float = 15.0) -> list[str]:
    """SIGTERM each started process group (daemons first, anvil last), SIGKILL what remains."""
    names = sorted(net.pids, key=lambda n: next((i for i, p in enumerate(STOP_ORDER) if n.startswith(p)), 99))
    stopped = []
    for name in names:
        pid = net.pids[name]
        if _dead(pid):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        except PermissionError:
            os.kill(pid, signal.SIGTERM)
        stopped.append(name)
        if name.startswith("miner"):  # let the daemon stop its SuperNode before the next one
            _wait_gone(pid, grace)
    for name in stopped:
        pid = net.pids[name]
        if not _wait_gone(pid, grace):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            print(f"{name} (pid {pid}) ignored SIGTERM: killed")
    (net.run_dir / STATE_FILE).rename(net.run_dir / "network.stopped.json")
    print(f"stopped {len(stopped)} processes of {net.run_dir}")
    return stopped


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _dead(pid):
            return True
        time.sleep(0.1)
    return _dead(pid)


def latest_run_dir() -> Path | None:
    marker = NETWORK_ROOT / "latest"
    if marker.exists():
        path = Path(marker.read_text().strip())
        if (path / STATE_FILE).exists():
            return path
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="start a local network and launch one task")
    u.add_argument("--miners", type=int, default=3)
    u.add_argument("--rounds", type=int, default=2)
    u.add_argument("--wait", action="store_true", help="follow the task to its end, then stop the network")
    u.add_argument("--keep", action="store_true", help="with --wait: leave the network running afterwards")
    u.add_argument("--json", help="with --wait: write the outcome here")
    u.add_argument("--run-dir", help="folder for keys, logs, state (default outputs/network/<date>-<time>)")
    u.add_argument("--dataset", default="digits", choices=["digits", "mnist", "fashion_mnist"])
    u.add_argument("--model", default="mlp")
    u.add_argument("--model-kwargs", default="{}", help="JSON; must equal conf/model/<model>.yaml's kwargs (the server's)")
    u.add_argument("--secagg", default="masked", choices=["masked", "nddfe"])
    u.add_argument("--bits", type=int, default=15)
    u.add_argument("--clip", type=float, default=0.5)
    u.add_argument("--density", type=float, default=0.1)
    u.add_argument("--warmup-rounds", type=int, default=0)
    u.add_argument("--warmup-start", type=float, default=0.25, help="DGC warm-up: first density (task and server)")
    u.add_argument("--warmup-factor", type=float, default=0.7, help="DGC warm-up: density factor per round")
    u.add_argument("--reward-wei", type=int, default=10**18)
    u.add_argument("--round-window-s", type=int, default=600)
    u.add_argument("--round-timeout-s", type=float, default=300)
    u.add_argument("--seed", type=int, default=42)
    u.add_argument("--threads", type=int, default=1)
    u.add_argument("--start-timeout", type=float, default=180)
    u.add_argument("--timeout", type=float, default=1800, help="--wait gives up after this many seconds")
    d = sub.add_parser("down", help="stop what `up` started (by PID)")
    d.add_argument("--run-dir", help="the network's folder (default: the latest one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        if args.miners < 2 or args.rounds < 1:
            print("error: --miners must be >= 2 (secure aggregation needs t >= 2) and --rounds >= 1", file=sys.stderr)
            return 2
        try:
            up(args)
        except (NetworkError, subprocess.CalledProcessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            run = latest_run_dir()
            if run is not None and not args.keep:
                down_network(Network.load(run))
            return 1
        except Exception:  # an unexpected failure: stop what was started, then show the traceback
            run = latest_run_dir()
            if run is not None and not args.keep:
                down_network(Network.load(run))
            raise
        except KeyboardInterrupt:
            run = latest_run_dir()
            if run is not None:
                down_network(Network.load(run))
            return 130
        return 0
    run = Path(args.run_dir).resolve() if args.run_dir else latest_run_dir()
    if run is None or not (run / STATE_FILE).exists():
        print("error: no running network found (give --run-dir)", file=sys.stderr)
        return 2
    down_network(Network.load(run))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
