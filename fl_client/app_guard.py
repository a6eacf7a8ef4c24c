"""ModelMine's SuperExec for a miner's SuperNode: runs only allow-listed ClientApps.

A Flower SuperNode runs whatever app (FAB) its SuperLink sends. Flower 1.41's own answer,
``flower-supernode --trusted-entities``, accepts only FABs carrying a license verification issued
by the Flower platform, so a self-hosted SuperLink cannot satisfy it. Instead the miner's daemon
starts the SuperNode with ``--isolation process`` (it launches no app itself) and runs this guard
in place of ``flower-superexec``: it takes each queued task from the SuperNode's runtime API and
launches ``flwr-clientapp`` only when the task's FAB sha256 is in the allow-list (the hash of the
ModelMine release the miner runs, computed from its own copy; see :func:`fab_hash_of`). Any other
app is refused, logged, and never executed; its message expires unanswered.

    python -m fl_client.app_guard --runtime-api-address 127.0.0.1:9094 --allow <sha256> [--allow ...]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
from pathlib import Path

log = logging.getLogger("modelmine.miner.app_guard")

_SHA256 = re.compile(r"[0-9a-f]{64}")


def fab_hash_of(app_dir: Path) -> str:
    """sha256 hex of the FAB ``flwr run`` builds from ``app_dir`` (Flower's deterministic build)."""
    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(Path(app_dir))).hexdigest()


def make_guarded_plugin(allowed: frozenset[str]) -> type:
    """A subclass of Flower's AutoExecPlugin that refuses tasks of any FAB not in ``allowed``."""
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.plugin import AutoExecPlugin

    refused: set[int] = set()

    class GuardedExecPlugin(AutoExecPlugin):  # type: ignore[misc, valid-type]
        def launch_task(self, token: str, task: object) -> LaunchResult:
            fab_hash = str(getattr(task, "fab_hash", "") or "")
            if fab_hash not in allowed:
                task_id = int(getattr(task, "task_id", 0))
                if task_id not in refused:
                    refused.add(task_id)
                    log.error("refused app with FAB sha256 %s (run %s): not ModelMine's allow-listed ClientApp",
                              fab_hash or "<none>", getattr(task, "run_id", "?"))
                return LaunchResult.failed(f"FAB {fab_hash or '<none>'} is not allow-listed by this miner")
            return super().launch_task(token, task)

    return GuardedExecPlugin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_client.app_guard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's runtime API host:port")
    parser.add_argument("--allow", action="append", default=[], help="allowed FAB sha256 (repeatable)")
    parser.add_argument("--root-certificates", help="CA bundle when the runtime API uses TLS")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    allowed = frozenset(h.lower() for h in args.allow)
    bad = [h for h in allowed if not _SHA256.fullmatch(h)]
    if not allowed or bad:
        print(f"error: give at least one --allow <64 hex sha256> (bad: {bad})", file=sys.stderr)
        return 2
    import flwr.supercore.superexec.run_superexec as runner

    runner.AutoExecPlugin = make_guarded_plugin(allowed)  # the loop instantiates this name
    log.info("app guard on %s: %d allowed ClientApp FAB hash(es)", args.runtime_api_address, len(allowed))
    runner.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.root_certificates is None,
        root_certificates_path=args.root_certificates,
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
