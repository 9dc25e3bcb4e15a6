"""The ``relay`` command.

Configuration errors end the command with one line on stderr naming the
variable, and exit status 2. Modules that define Prometheus metrics are imported
only after the metrics directory is settled (see ``relay.server``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from relay.errors import ConfigError, RelayError, RulesError

SANDBOX_PORTS = (8081, 8082, 8083)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relay`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:
        # The emulators parse their own options.
        from relay.sandbox.server import main as sandbox_main

        code: int = sandbox_main(argv[1:])
        return code
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        code = args.handler(args)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    except RulesError as exc:
        for problem in exc.problems:
            print(f"relay: {problem}", file=sys.stderr)
        return 2
    except RelayError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Turn a helpdesk tag into a Bugpilot capture and a note.",
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    run = commands.add_parser("run", help="web server and worker on one machine")
    run.set_defaults(handler=_run)
    web = commands.add_parser("web", help="the web server (gunicorn)")
    web.set_defaults(handler=_web)
    worker = commands.add_parser("worker", help="the delivery worker")
    worker.set_defaults(handler=_worker)

    rules = commands.add_parser("rules", help="check and explain the rules file")
    rules_commands = rules.add_subparsers(metavar="ACTION")
    check = rules_commands.add_parser("check", help="validate a rules file")
    check.add_argument("file", nargs="?", help="default: $RELAY_RULES_FILE")
    check.set_defaults(handler=_rules_check)
    explain = rules_commands.add_parser("explain", help="which rules a tag fires")
    explain.add_argument("--provider", required=True, choices=("zendesk", "intercom"))
    explain.add_argument("--tag", required=True)
    explain.add_argument("--file", help="default: $RELAY_RULES_FILE")
    explain.set_defaults(handler=_rules_explain)

    jobs = commands.add_parser("jobs", help="inspect, replay and purge jobs")
    jobs_commands = jobs.add_subparsers(metavar="ACTION")
    listing = jobs_commands.add_parser("list", help="jobs, newest first")
    listing.add_argument("--state", choices=("pending", "noting", "done", "dead"))
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--before", type=int, help="show jobs older than this id")
    listing.set_defaults(handler=_jobs_list)
    show = jobs_commands.add_parser("show", help="one job and its attempts")
    show.add_argument("id", type=int)
    show.set_defaults(handler=_jobs_show)
    retry = jobs_commands.add_parser("retry", help="send dead jobs back to work")
    retry.add_argument("ids", nargs="*", type=int)
    retry.add_argument("--state", choices=("dead",), help="every dead job")
    retry.set_defaults(handler=_jobs_retry)
    purge = jobs_commands.add_parser("purge", help="delete old done and dead jobs")
    purge.add_argument(
        "--older-than", help="a duration such as 7d or 12h (default $RELAY_RETENTION)"
    )
    purge.set_defaults(handler=_jobs_purge)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(metavar="ACTION")
    upgrade = db_commands.add_parser("upgrade", help="apply migrations")
    upgrade.set_defaults(handler=_db_upgrade)

    demo = commands.add_parser("demo", help="one full loop against the emulators")
    demo.add_argument("--url", default="http://127.0.0.1:8080")
    demo.set_defaults(handler=_demo)
    commands.add_parser("sandbox", help="the emulators alone (see relay sandbox -h)")
    return parser


# -- environment and settings ---------------------------------------------------


def _environment() -> dict[str, str]:
    """The process environment, with the emulators' settings in sandbox mode."""
    env = dict(os.environ)
    if env.get("RELAY_SANDBOX", "").strip() in ("1", "true", "yes"):
        from relay.sandbox import sandbox_defaults

        for key, value in sandbox_defaults(SANDBOX_PORTS).items():
            env.setdefault(key, value)
    return env


def _settings(env: Mapping[str, str] | None = None) -> Any:
    from relay.config import Settings

    return Settings.from_env(_environment() if env is None else env)


def _store(settings: Any, *, auto_upgrade: bool | None = None) -> Any:
    from relay import migrate
    from relay.store import Store

    store = Store.from_url(settings.database_url)
    try:
        migrate.check(
            store.engine,
            auto_upgrade=store.is_sqlite if auto_upgrade is None else auto_upgrade,
        )
    except migrate.SchemaMismatch:
        store.close()
        raise
    except Exception as exc:
        store.close()
        raise RelayError(
            f"cannot reach the database at RELAY_DATABASE_URL: {_first_line(exc)}"
        ) from None
    return store


def _first_line(exc: BaseException) -> str:
    from relay.logging import scrub

    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return str(scrub(text[0] if text else type(exc).__name__))


def _configure_logging(settings: Any) -> None:
    from relay.logging import configure

    configure(settings.log_level, settings.log_format)


# -- commands ---------------------------------------------------------------------


def _run(_args: argparse.Namespace) -> int:
    from relay.server import run_both

    env = _environment()
    settings = _settings(env)
    _configure_logging(settings)
    _check_rules(settings.rules_file)
    _store(settings).close()
    sandbox = None
    if settings.sandbox:
        sandbox = _start_sandbox_if_needed()
    try:
        return run_both(settings, env)
    finally:
        if sandbox is not None:
            sandbox.stop()


def _start_sandbox_if_needed() -> Any:
    import socket

    from relay.sandbox import Sandbox

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", SANDBOX_PORTS[0])) == 0:
            return None  # `relay sandbox` is already running
    sandbox = Sandbox(ports=SANDBOX_PORTS)
    sandbox.start()
    return sandbox


def _web(_args: argparse.Namespace) -> int:
    from relay.server import ensure_metrics_dir, run_web

    settings = _settings()
    _configure_logging(settings)
    _check_rules(settings.rules_file)
    _store(settings).close()
    ensure_metrics_dir()
    return run_web(settings)


def _worker(_args: argparse.Namespace) -> int:
    from relay.server import run_worker

    settings = _settings()
    _configure_logging(settings)
    _store(settings).close()
    return run_worker(settings)


def _check_rules(path: str) -> Any:
    from relay.rules import load_rules

    return load_rules(path)


def _rules_path(given: str | None) -> str:
    return given or _environment().get("RELAY_RULES_FILE") or "rules.yaml"


def _rules_check(args: argparse.Namespace) -> int:
    from relay.rules import describe, load_rules

    path = _rules_path(args.file)
    try:
        rules = load_rules(path)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(describe(rules))
    return 0


def _rules_explain(args: argparse.Namespace) -> int:
    from relay.rules import load_rules

    rules = load_rules(_rules_path(args.file))
    for line in rules.explain(args.provider, args.tag):
        print(line)
    return 0 if rules.match(args.provider, args.tag) else 1


def _jobs_list(args: argparse.Namespace) -> int:
    from relay.app import job_json

    store = _store(_settings())
    rows = store.list_jobs(state=args.state, limit=args.limit, before=args.before)
    if not rows:
        print("no jobs")
    for row in rows:
        job = job_json(row)
        reason = job["dead_reason"] or job["last_error"] or ""
        print(
            f"{job['id']:>8}  {job['state']:<8} {job['provider']:<9}"
            f" {job['target']['kind']}:{job['target']['id']:<12} {job['rule']:<24}"
            f" attempts={job['attempts']:<3} {reason}"
        )
    if len(rows) == args.limit:
        print(f"more: relay jobs list --before {rows[-1]['id']}")
    return 0


def _jobs_show(args: argparse.Namespace) -> int:
    from relay.app import attempt_json, job_json

    row = _store(_settings()).get_job(args.id)
    if row is None:
        print(f"relay: job {args.id} not found", file=sys.stderr)
        return 1
    body = job_json(row)
    body["history"] = [attempt_json(item) for item in row["history"]]
    print(json.dumps(body, indent=2))
    return 0


def _jobs_retry(args: argparse.Namespace) -> int:
    store = _store(_settings())
    ids = list(args.ids)
    if args.state == "dead":
        ids += store.dead_job_ids()
    if not ids:
        print("relay: name job ids or --state dead", file=sys.stderr)
        return 2
    failed = 0
    for job_id, outcome in store.retry(ids).items():
        if outcome == "retried":
            print(f"job {job_id}: retried")
        elif outcome == "not_dead":
            print(f"job {job_id}: not retried, it is not dead", file=sys.stderr)
            failed += 1
        else:
            print(f"job {job_id}: not found", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _jobs_purge(args: argparse.Namespace) -> int:
    from relay.config import parse_duration

    settings = _settings()
    try:
        older_than = (
            parse_duration(args.older_than) if args.older_than else settings.retention
        )
    except ValueError:
        print(f"relay: not a duration: {args.older_than}", file=sys.stderr)
        return 2
    purged = _store(settings).purge(older_than=older_than)
    print(f"purged {purged} job(s) finished more than {older_than:.0f}s ago")
    return 0


def _db_upgrade(_args: argparse.Namespace) -> int:
    from relay import migrate
    from relay.store import Store

    env = _environment()
    url = env.get("RELAY_DATABASE_URL") or "sqlite:///relay.db"
    store = Store.from_url(url)
    try:
        migrate.upgrade(store.engine)
    except Exception as exc:
        raise RelayError(f"migration failed: {_first_line(exc)}") from None
    finally:
        store.close()
    print(f"database at revision {migrate.head()}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from relay.demo import run_demo

    code: int = run_demo(args.url, _environment())
    return code


if __name__ == "__main__":
    sys.exit(main())
