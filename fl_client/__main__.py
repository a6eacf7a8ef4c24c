"""``python -m fl_client`` / ``fl-miner``: the ModelMine miner daemon.

    fl-miner --config-name miner miner.dir=miners/m0 chain.rpc_url=http://127.0.0.1:8545 \\
        chain.contract_address=0x... store.url=http://127.0.0.1:8470 supernode.superlink=127.0.0.1:8000 supernode.insecure=true

watches the chain for tasks, checks each against this miner's data and policy, downloads and
verifies the model and spec, registers and stakes, runs a Flower SuperNode (only ModelMine's
ClientApp may run on it), reveals when nobody relays, and claims rewards (fl_client.daemon).
Settings: conf/miner.yaml (Hydra; any ``key=value`` override). Bad settings stop with one line
``error: ...`` before anything starts.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key and the fix."""


def compose(argv: list[str]) -> Any:
    """Hydra config from ``--config-name NAME`` (default ``miner``) and ``key=value`` overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    name, overrides, args = "miner", [], list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config-name", "-cn"):
            if not args:
                raise ConfigError("--config-name needs a value")
            name = args.pop(0)
        elif arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
        elif "=" in arg:
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r} (settings are key=value, e.g. miner.dir=miners/m0)")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name=name, overrides=overrides)


def build_config(cfg: Any) -> Any:
    """Validate ``cfg`` and build :class:`fl_client.daemon.DaemonConfig`; ConfigError names the key."""
    from omegaconf import MissingMandatoryValue, OmegaConf

    from fl_client.daemon import DaemonConfig
    from fl_client.supervisor import SuperNodeSettings
    from fl_client.validator import MinerPolicy

    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or str(exc)
        raise ConfigError(f"{key} is required (add {key}=...)") from exc
    assert isinstance(raw, dict)
    m, ch, st, sn, app, pol = (raw[k] for k in ("miner", "chain", "store", "supernode", "app", "policy"))
    miner_dir = Path(m["dir"]).expanduser()
    if not miner_dir.is_dir():
        raise ConfigError(f"miner.dir {miner_dir} is not a folder (create keys with `fl-miner keys create`)")
    if not (miner_dir / "keys" / "eth.key").exists() and not os.environ.get("MODELMINE_ETH_KEY"):
        raise ConfigError(f"no miner keys in {miner_dir / 'keys'} (create them with `fl-miner keys create`)")
    data_dir = Path(m["data_dir"]).expanduser() if m["data_dir"] else miner_dir
    if not (data_dir / "manifest.json").exists():
        raise ConfigError(f"miner.data_dir {data_dir} holds no manifest.json (run scripts/prepare_data.py)")
    if not str(ch["rpc_url"]).startswith(("http://", "https://")):
        raise ConfigError(f"chain.rpc_url must be an http(s) URL, got {ch['rpc_url']!r}")
    if not _ADDRESS.fullmatch(str(ch["contract_address"])):
        raise ConfigError(f"chain.contract_address must be a 0x address, got {ch['contract_address']!r}")
    if not str(st["url"]).startswith(("http://", "https://")):
        raise ConfigError(f"store.url must be an http(s) URL, got {st['url']!r}")
    if ":" not in str(sn["superlink"]):
        raise ConfigError(f"supernode.superlink must be host:port, got {sn['superlink']!r}")
    if not sn["insecure"] and not sn["root_certificates"]:
        raise ConfigError("supernode: give root_certificates (TLS) or insecure=true (loopback only)")
    for key in ("root_certificates", "auth_private_key"):
        if sn[key] and not Path(sn[key]).expanduser().is_file():
            raise ConfigError(f"supernode.{key} {sn[key]} does not exist")
    if not 1024 <= int(sn["runtime_port"]) <= 65_000:
        raise ConfigError(f"supernode.runtime_port must be in 1024..65000, got {sn['runtime_port']}")
    if float(ch["poll_interval_s"]) <= 0 or int(ch["retries"]) < 0:
        raise ConfigError("chain.poll_interval_s must be > 0 and chain.retries >= 0")
    allowed = [str(h).lower() for h in app["allowed_fab_hashes"]]
    bad = [h for h in allowed if not _SHA256.fullmatch(h)]
    if bad:
        raise ConfigError(f"app.allowed_fab_hashes must be 64-hex sha256 values, got {bad}")
    if not allowed:
        from fl_client.app_guard import fab_hash_of

        app_dir = Path(app["dir"]).expanduser() if app["dir"] else CONF_DIR.parent
        if not (app_dir / "pyproject.toml").exists():
            raise ConfigError(f"app.dir {app_dir} is not a ModelMine checkout (no pyproject.toml)")
        allowed = [fab_hash_of(app_dir)]
    stake = int(m["stake_wei"])
    policy = MinerPolicy(
        datasets=tuple(pol["datasets"]), min_reward_wei=int(pol["min_reward_wei"]),
        max_stake_wei=int(pol["max_stake_wei"]), gas_reserve_wei=int(pol["gas_reserve_wei"]),
        backends=tuple(pol["backends"]), min_time_left_s=int(pol["min_time_left_s"]),
    )
    if stake <= 0 or stake > policy.max_stake_wei:
        raise ConfigError(f"miner.stake_wei must be in 1..policy.max_stake_wei ({policy.max_stake_wei}), got {stake}")
    return DaemonConfig(
        miner_dir=miner_dir, data_dir=data_dir, rpc_url=str(ch["rpc_url"]),
        contract_address=str(ch["contract_address"]), store_url=str(st["url"]),
        supernode=SuperNodeSettings(
            superlink=str(sn["superlink"]), runtime_port=int(sn["runtime_port"]), insecure=bool(sn["insecure"]),
            root_certificates=str(sn["root_certificates"]), auth_private_key=str(sn["auth_private_key"]),
            max_retries=int(sn["max_retries"]),
        ),
        allowed_fab_hashes=allowed, policy=policy, stake_wei=stake, from_block=int(ch["from_block"]),
        poll_interval_s=float(ch["poll_interval_s"]), chain_retries=int(ch["retries"]),
        chain_backoff_s=float(ch["backoff_s"]), reveal_grace_s=float(pol["reveal_grace_s"]),
        claim=bool(pol["claim"]), supernode_backoff_s=float(sn["backoff_s"]),
        supernode_max_backoff_s=float(sn["max_backoff_s"]), threads=int(m["threads"]),
        exit_when_idle=bool(m["exit_when_idle"]),
    )


def run_daemon(argv: list[str]) -> int:
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    try:
        cfg = compose(argv)
        daemon_cfg = build_config(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - Hydra override/parse errors: one line, not a traceback
        print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 2
    logging.basicConfig(level=str(cfg.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from contracts.chain import ChainError
    from fl_client.daemon import MinerDaemon, identity_or_error

    identity = identity_or_error(daemon_cfg.miner_dir)
    try:
        daemon = MinerDaemon(daemon_cfg, identity)
    except ChainError as exc:
        print(f"error: {exc} (check chain.rpc_url / chain.contract_address)", file=sys.stderr)
        return 2
    return daemon.run()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "keys":
        from fl_client import keys_cli  # added by the app helper: `fl-miner keys create`

        sys.exit(keys_cli.main(args[1:]))
    sys.exit(run_daemon(args))


if __name__ == "__main__":
    main()
