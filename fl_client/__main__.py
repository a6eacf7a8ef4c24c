"""``python -m fl_client`` / ``fl-miner``: join a ModelMine federation as a miner.

Starts a Flower SuperNode connected to the federation's SuperLink; the ClientApp it runs
(fl_client.app) reads this miner's private data from ``--data-dir`` and never uploads it.

    python -m fl_client --superlink 127.0.0.1:9092 --data-dir local_data/mnist/iid-n10-s42/miner_0 --insecure

The long-running daemon (chain watcher, task validation, model download) builds on this entry point.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def supernode_command(args: argparse.Namespace) -> list[str]:
    exe = shutil.which("flower-supernode", path=str(Path(sys.executable).parent)) or shutil.which("flower-supernode")
    if exe is None:
        raise SystemExit("flower-supernode not found: run `bash scripts/setup.sh` first")
    data_dir = Path(args.data_dir).resolve()
    if not (data_dir / "manifest.json").exists():
        raise SystemExit(f"{data_dir} holds no prepared data (manifest.json); run scripts/prepare_data.py")
    cmd = [exe, "--superlink", args.superlink, "--node-config", f'data-dir="{data_dir}" num-threads={args.threads}']
    if args.insecure:
        cmd.append("--insecure")
    elif args.root_certificates:
        cmd += ["--root-certificates", args.root_certificates]
    if args.auth_private_key:
        cmd += ["--auth-supernode-private-key", args.auth_private_key]
    if args.port:
        cmd += ["--port", str(args.port)]
    return cmd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fl-miner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--superlink", default="127.0.0.1:9092", help="SuperLink Fleet API host:port")
    parser.add_argument("--data-dir", required=True, help="this miner's partition folder (holds manifest.json)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for training")
    parser.add_argument("--insecure", action="store_true", help="plain gRPC (loopback tests only)")
    parser.add_argument("--root-certificates", help="PEM CA bundle to verify the SuperLink's TLS certificate")
    parser.add_argument("--auth-private-key", help="SuperNode authentication private key (PEM file)")
    parser.add_argument("--port", type=int, help="local ClientAppIo port (several miners on one host)")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    cmd = supernode_command(args)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
