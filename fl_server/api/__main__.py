"""``python -m fl_server.api --db PATH_OR_URL [--host H] [--port P]``: serve a run database (finished
runs, or runs this API starts) with the REST API and dashboard. Writes need the token from
``--token-env`` (default MODELMINE_API_TOKEN) or ``--token-file``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fl_server.api import DashboardConfigError, DashboardSettings, check_port_free, load_token
from fl_server.api.app import create_app, load_publisher_profile
from fl_server.rundb import RunDB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_server.api", description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="run database: a file path (SQLite) or a SQLAlchemy URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token-env", default="MODELMINE_API_TOKEN", help="env var holding the bearer token")
    parser.add_argument("--token-file", default="", help="file holding the bearer token (first line)")
    parser.add_argument("--runs-dir", default="", help="where runs started from the API write (default: next to the db)")
    parser.add_argument("--publisher-profile", default="",
                        help="JSON naming the deployment POST /api/tasks publishes to (docs/dashboard.md)")
    args = parser.parse_args(argv)
    try:
        if "://" not in args.db and not Path(args.db).parent.is_dir():
            raise DashboardConfigError(f"folder of --db {args.db} does not exist")
        settings = DashboardSettings(enabled=True, host=args.host, port=args.port, token_env=args.token_env,
                                     token_file=args.token_file)
        token = load_token(settings)
        check_port_free(args.host, args.port)
        profile = load_publisher_profile(Path(args.publisher_profile)) if args.publisher_profile else None
        db = RunDB.open(args.db)
    except (DashboardConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn


    runs_dir = Path(args.runs_dir) if args.runs_dir else (
        Path(args.db).resolve().parent / "api_runs" if "://" not in args.db else Path("outputs") / "api_runs")
    app = create_app(db, token=token, runs_dir=runs_dir, publisher_profile=profile)
    auth = "writes enabled" if token else f"read-only (set {args.token_env} to start/stop runs)"
    print(f"dashboard: http://{args.host}:{args.port}/  (API docs /docs; {auth}); database {db.url}", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, ws="none")
    finally:
        app.state.manager.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
