"""A miner's identity: an Ethereum key (signs submissions, votes, reveals) and a secp256k1 key pair
for secure aggregation (``P_i`` registered on chain). Both are secrets of the miner alone.

Sources, in order: environment variables ``MODELMINE_ETH_KEY`` / ``MODELMINE_SECAGG_KEY`` (hex), or
files ``<folder>/keys/eth.key`` and ``<folder>/keys/secagg.key`` (hex, mode 0600). Secrets are never
printed: ``repr`` shows only the public parts. ``keys/public.json`` holds what others may know.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account

from aggregator.secagg import MinerKeys

ETH_ENV = "MODELMINE_ETH_KEY"
SECAGG_ENV = "MODELMINE_SECAGG_KEY"


class IdentityError(RuntimeError):
    """Keys that are missing, unreadable, too widely readable, or malformed."""


@dataclass(frozen=True)
class MinerIdentity:
    eth_key: bytes = field(repr=False)
    secagg: MinerKeys = field(repr=False)

    @property
    def address(self) -> str:
        return Account.from_key(self.eth_key).address

    @property
    def secagg_public(self) -> bytes:
        return self.secagg.public

    def __repr__(self) -> str:
        return f"MinerIdentity(address={self.address}, secagg_public={self.secagg_public.hex()})"

    def public_record(self) -> dict[str, str]:
        return {"address": self.address, "secagg_public": self.secagg_public.hex()}


def _parse_hex(text: str, what: str) -> bytes:
    """Exactly 64 hex digits (optionally 0x-prefixed); anything else is refused, never padded."""
    value = text.strip().removeprefix("0x")
    if len(value) != 64:
        raise IdentityError(f"{what} must hold exactly 64 hex digits (32 bytes), found {len(value)} characters")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise IdentityError(f"{what} is not hex") from exc


def _read_secret_file(path: Path, what: str) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(f"{path} is readable by others (mode {oct(mode)}); run chmod 600 {path}")
    return _parse_hex(path.read_text(), f"{path} ({what})")


def _write_secret(path: Path, secret: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex())


def key_dir(folder: Path) -> Path:
    return Path(folder) / "keys"


def create_identity(folder: Path, keys: Path | None = None) -> MinerIdentity:
    """Generate fresh keys into ``keys`` (default ``folder/keys``; files 0600, folder 0700);
    refuses to overwrite existing keys."""
    keys = Path(keys) if keys is not None else key_dir(folder)
    if (keys / "eth.key").exists() or (keys / "secagg.key").exists():
        raise IdentityError(f"{keys} already holds keys; refusing to overwrite them")
    identity = MinerIdentity(eth_key=bytes(Account.create().key), secagg=MinerKeys.generate())
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    _write_secret(keys / "eth.key", identity.eth_key)
    _write_secret(keys / "secagg.key", identity.secagg.secret)
    (keys / "public.json").write_text(json.dumps(identity.public_record(), indent=2))
    return identity


def load_identity(folder: Path | None, keys: Path | None = None) -> MinerIdentity:
    """Keys from the environment, else from ``keys`` (default ``folder/keys``); IdentityError names the
    file that is missing, too widely readable or malformed."""
    env_eth, env_sa = os.environ.get(ETH_ENV), os.environ.get(SECAGG_ENV)
    if env_eth and env_sa:
        eth, sa = _parse_hex(env_eth, ETH_ENV), _parse_hex(env_sa, SECAGG_ENV)
    else:
        if folder is None and keys is None:
            raise IdentityError(f"no keys: set {ETH_ENV} and {SECAGG_ENV} or give a miner folder")
        keys = Path(keys) if keys is not None else key_dir(Path(folder))  # type: ignore[arg-type]
        if not (keys / "eth.key").exists() or not (keys / "secagg.key").exists():
            raise IdentityError(f"no keys in {keys}; create them with: fl-miner keys create --dir {keys.parent}")
        eth = _read_secret_file(keys / "eth.key", "eth.key")
        sa = _read_secret_file(keys / "secagg.key", "secagg.key")
    try:
        secagg = MinerKeys.from_secret(sa)
    except Exception as exc:
        raise IdentityError(f"secure-aggregation secret ({SECAGG_ENV} or secagg.key) is not a valid secp256k1 scalar: {exc}") from exc
    try:
        Account.from_key(eth)
    except Exception as exc:
        raise IdentityError(f"Ethereum key ({ETH_ENV} or eth.key) is not a valid secp256k1 key: {exc}") from exc
    return MinerIdentity(eth_key=eth, secagg=MinerKeys(secret=secagg.secret, public=secagg.public))


def load_or_create_identity(folder: Path, keys: Path | None = None) -> MinerIdentity:
    """Simulation convenience: load the miner's keys, creating them the first time."""
    keys = Path(keys) if keys is not None else key_dir(folder)
    if not (keys / "eth.key").exists() and not (keys / "secagg.key").exists() and not os.environ.get(ETH_ENV):
        try:
            return create_identity(folder, keys)
        except (FileExistsError, IdentityError):  # another process created them in between
            pass
    return load_identity(folder, keys)


def read_public_record(folder: Path) -> dict[str, str]:
    """The public part a miner publishes (address, secagg public key); no secret is read."""
    path = key_dir(folder) / "public.json"
    if not path.exists():
        raise IdentityError(f"{path} missing; the miner has no keys yet")
    return json.loads(path.read_text())
