"""``fl-miner keys create --dir <miner folder>`` / ``fl-miner keys show --dir <miner folder>``.

``create`` makes a miner's keys in ``<dir>/keys``: ``eth.key`` (Ethereum account: signs submissions,
votes, reveals and its registration) and ``secagg.key`` (secure-aggregation secret), both hex, mode 0600
in a 0700 folder, plus ``public.json`` (address and public key). It refuses to overwrite existing keys.
``show`` prints the public part only. Secrets are never printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fl_client.identity import IdentityError, create_identity, load_identity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fl-miner keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("create", "make this miner's keys (refuses to overwrite)"), ("show", "print the public part")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--dir", required=True, help="the miner's folder; keys go to <dir>/keys")
        cmd.add_argument("--key-dir", help="keys folder (default <dir>/keys)")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    keys = Path(args.key_dir) if args.key_dir else None
    try:
        identity = create_identity(folder, keys) if args.command == "create" else load_identity(folder, keys)
    except IdentityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = keys or folder / "keys"
    verb = "created" if args.command == "create" else "keys in"
    print(f"{verb} {where}: address {identity.address}, secure-aggregation key {identity.secagg_public.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
