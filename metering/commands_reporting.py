"""The billing and oversight commands: `bill`, `reconcile`, `report adoption`, `access`,
`export`, `serve` (the live oversight page).

`metering.cli` adds them with `add_reporting_commands` and runs them with
`run_reporting_command`.
Each command opens the store, does its work and closes it (the embedded store can be
open in one process at a time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from metering.periods import Period, PeriodError, fiscal_quarter, fiscal_year, month
from metering.settings import Settings

__all__ = ["COMMANDS", "add_reporting_commands", "run_reporting_command"]

COMMANDS: Final = ("bill", "reconcile", "report", "access", "export", "serve", "verify", "certify")


def _period_type(parse: Any) -> Any:
    def convert(text: str) -> Period:
        try:
            period: Period = parse(text)
        except PeriodError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return period

    return convert


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clickhouse-url",
        dest="clickhouse_url",
        help="chdb://PATH or http(s)://user:pass@host:8123 (env CLICKHOUSE_URL)",
    )


def _period_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--month", dest="period", type=_period_type(month), help="a UTC calendar month, YYYY-MM"
    )
    group.add_argument(
        "--fiscal-year",
        dest="period",
        type=_period_type(fiscal_year),
        help="a federal fiscal year, e.g. 2027 (2026-10-01 .. 2027-09-30)",
    )
    group.add_argument(
        "--fiscal-quarter",
        dest="period",
        type=_period_type(fiscal_quarter),
        help="a federal fiscal quarter, e.g. 2027Q1 (October to December 2026)",
    )


def add_reporting_commands(subparsers: Any) -> None:
    """Add `bill`, `reconcile`, `report` and `access` to a `metering` subparsers object."""
    bill = subparsers.add_parser("bill", help="price a period and record the billing run")
    _store_option(bill)
    _period_options(bill)
    bill.add_argument("--format", choices=("table", "json", "csv"), default="table")
    bill.add_argument("--out", type=Path, help="write the statement here instead of stdout")
    bill.add_argument(
        "--price-book", type=Path, help="price book TOML (default: metering/billing/pricebook.toml)"
    )
    bill.add_argument(
        "--dry-run",
        action="store_true",
        help="compute and compare with the latest run, record nothing",
    )
    bill.add_argument(
        "--strict",
        action="store_true",
        help="refuse the statement when a model has no list price in the price book "
        "(default: bill it, with that model's list value shown as unpriced and a warning)",
    )

    reconcile = subparsers.add_parser(
        "reconcile", help="prove events counted = rollup totals = billed quantities"
    )
    _store_option(reconcile)
    _period_options(reconcile)
    reconcile.add_argument("--format", choices=("table", "json"), default="table")

    report = subparsers.add_parser("report", help="oversight reports")
    reports = report.add_subparsers(dest="report", required=True)
    adoption = reports.add_parser("adoption", help="adoption per tenant, level, agency, model, day")
    _store_option(adoption)
    _period_options(adoption)
    adoption.add_argument("--agency", help="limit every figure to this agency id")
    adoption.add_argument("--format", choices=("table", "json", "csv", "html"), default="table")
    adoption.add_argument("--out", type=Path, help="write the report here instead of stdout")
    adoption.add_argument(
        "--min-cell-users",
        type=_positive_int,
        default=10,
        metavar="N",
        help="suppress figures describing fewer than N active users (10)",
    )
    adoption.add_argument(
        "--top", type=_positive_int, default=10, help="agencies ranked per tenant (10)"
    )
    adoption.add_argument(
        "--as-first-counted",
        action="store_true",
        help="the period as first counted, before corrections (default: as corrected); "
        "reads the raw counted events, kept METERING_RAW_RETENTION_DAYS",
    )

    export = subparsers.add_parser(
        "export", help="a period's views, statement lines and rejection counts as files"
    )
    _store_option(export)
    _period_options(export)
    export.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    export.add_argument("--out", type=Path, required=True, help="directory for the files")
    export.add_argument("--agency", help="only this agency's rows (its views and lines)")

    verify = subparsers.add_parser(
        "verify",
        help="recompute every flush's content hash and the chain, and check the rollups "
        "against the counted events",
    )
    _store_option(verify)
    verify_period = verify.add_mutually_exclusive_group()
    verify_period.add_argument(
        "--month",
        dest="period",
        type=_period_type(month),
        help="check the rollups of this UTC month only, YYYY-MM (default: every day)",
    )
    verify_period.add_argument(
        "--fiscal-year", dest="period", type=_period_type(fiscal_year), help="or a fiscal year"
    )
    verify_period.add_argument(
        "--fiscal-quarter",
        dest="period",
        type=_period_type(fiscal_quarter),
        help="or a fiscal quarter",
    )

    certify = subparsers.add_parser(
        "certify",
        help="a completeness certificate for a period (ledger, rollups, billing), "
        "recorded in metering.certificates",
    )
    _store_option(certify)
    _period_options(certify)
    certify.add_argument("--format", choices=("json", "html"), default="json")
    certify.add_argument("--out", type=Path, help="write the certificate here instead of stdout")

    access = subparsers.add_parser("access", help="agency-scoped read-only ClickHouse access")
    kinds = access.add_subparsers(dest="access", required=True)
    agency_user = kinds.add_parser("agency-user", help="SQL for one agency's read-only user")
    _store_option(agency_user)
    agency_user.add_argument("--agency", required=True)
    agency_user.add_argument(
        "--password-sha256",
        metavar="HEX",
        help="sha256 of the user's password (default: a placeholder; "
        "with --apply, a random password printed once)",
    )
    agency_user.add_argument(
        "--apply",
        action="store_true",
        help="create the user: in the local server's users.d when CLICKHOUSE_URL is the "
        "local server, else by running the SQL on the server in CLICKHOUSE_URL",
    )
    agency_user.add_argument(
        "--users-dir",
        type=Path,
        metavar="DIR",
        help="write the user as a users.d file into DIR instead (e.g. the directory "
        "docker-compose.yml mounts as the server's users.d)",
    )
    _add_serve_command(subparsers)


def _add_serve_command(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="the adoption report as a live web page; visitors sign in with a ClickHouse "
        "user (an agency's sees its agency only) and every page is read as that user",
    )
    _store_option(serve)
    serve.add_argument(
        "--host",
        dest="serve_host",
        help="address to listen on (env METERING_SERVE_HOST, 127.0.0.1); any but loopback "
        "needs --tls-cert and --tls-key, or --insecure-http",
    )
    serve.add_argument(
        "--port",
        dest="serve_port",
        type=int,
        help="port to listen on (env METERING_SERVE_PORT, 8080)",
    )
    serve.add_argument(
        "--min-cell-users",
        type=_positive_int,
        default=10,
        metavar="N",
        help="suppress figures describing fewer than N active users (10)",
    )
    serve.add_argument(
        "--top", type=_positive_int, default=10, help="agencies ranked per tenant (10)"
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PATH",
        help="serve HTTPS (TLS 1.2 or later) with this PEM certificate (chain); needs --tls-key",
    )
    serve.add_argument(
        "--tls-key", type=Path, metavar="PATH", help="the certificate's private key (PEM)"
    )
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP on a non-loopback --host (only behind a TLS-terminating proxy)",
    )
    serve.add_argument(
        "--public",
        action="store_true",
        help="show visitors who have not signed in the published aggregate (tenants and "
        "levels of government, small cells suppressed); without it every page asks to sign in",
    )
    serve.add_argument(
        "--oversight-user",
        dest="oversight_users",
        action="append",
        default=[],
        metavar="NAME",
        help="a ClickHouse user that may sign in and see every agency, as the reporter can "
        "(repeatable)",
    )


def run_reporting_command(args: argparse.Namespace, settings: Settings) -> int | None:
    """Run one of COMMANDS; None when `args.command` is not one of them."""
    if args.command not in COMMANDS:
        return None
    from metering.billing.pricebook import PriceBookError
    from metering.billing.statements import BillingError
    from metering.oversight.access import AccessError

    try:
        if args.command == "bill":
            return _bill(args, settings)
        if args.command == "reconcile":
            return _reconcile(args, settings)
        if args.command == "report":
            return _report(args, settings)
        if args.command == "export":
            return _export(args, settings)
        if args.command == "serve":
            return _serve(args, settings)
        if args.command == "verify":
            return _verify(args, settings)
        if args.command == "certify":
            return _certify(args, settings)
        return _access(args, settings)
    except (PriceBookError, BillingError, AccessError) as error:
        print(f"metering {args.command}: {error}", file=sys.stderr)
        return 1


def _open(settings: Settings) -> Any:
    """Billing and reports read the store (bill writes only its run tables): no DDL."""
    from metering.open_store import open_for_reading

    return open_for_reading(settings)


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def _bill(args: argparse.Namespace, settings: Settings) -> int:
    from metering.billing.pricebook import load_price_book
    from metering.billing.render import render_statement, summarise_outcome
    from metering.billing.runs import bill_statement
    from metering.billing.statements import (
        price_statement,
        read_settled_usage,
    )

    period: Period = args.period
    book = load_price_book(args.price_book)
    client = _open(settings)
    try:
        usage = read_settled_usage(client, period)
        statement = price_statement(usage, book, strict=args.strict)
        for unpriced in statement.unpriced:
            print(unpriced.warning(), file=sys.stderr)
        if not statement.lines:
            print(f"no counted usage in {period.describe()}: nothing to bill, nothing recorded")
            return 0
        outcome = bill_statement(client, statement, now=datetime.now(UTC), record=not args.dry_run)
    finally:
        client.close()
    _emit(render_statement(outcome, args.format, book.source), args.out)
    notes = summarise_outcome(outcome)
    if period.end > datetime.now(UTC).date():
        notes.append(f"note: {period.label} is not over yet; this statement is provisional")
    summary = sys.stdout if args.out is not None else sys.stderr
    for note in notes:
        print(note, file=summary)
    return 0


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from metering.billing.reconcile import reconcile
    from metering.billing.render import render_reconciliation
    from metering.kafka_retention import broker_earliest_offsets

    try:  # offsets the broker deleted that no worker has reached yet
        earliest: dict[int, int] | None = broker_earliest_offsets(settings, settings.events_topic)
    except Exception as error:
        earliest = None
        print(
            f"metering reconcile: could not read the earliest offsets of "
            f"METERING_EVENTS_TOPIC={settings.events_topic} ({type(error).__name__}); only "
            "expired offsets a worker recorded are shown",
            file=sys.stderr,
        )
    client = _open(settings)
    try:
        result = reconcile(
            client, args.period, events_topic=settings.events_topic, broker_earliest=earliest
        )
    finally:
        client.close()
    print(render_reconciliation(result, args.format))
    return 0 if result.ok else 1


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from metering.verify import render_verification, verify_store

    client = _open(settings)
    try:
        result = verify_store(client, args.period)
    finally:
        client.close()
    print(render_verification(result))
    return 0 if result.ok else 1


def _certify(args: argparse.Namespace, settings: Settings) -> int:
    from metering.certify import certify, record_certificate, render_certificate

    client = _open(settings)
    try:
        cert = certify(client, args.period, datetime.now(UTC))
        text = render_certificate(cert, args.format)
        digest = record_certificate(client, cert, args.format, text)
    finally:
        client.close()
    _emit(text, args.out)
    summary = sys.stdout if args.out is not None else sys.stderr
    print(
        f"certificate for {args.period.describe()} ({args.format}) recorded in "
        f"metering.certificates, sha256 {digest}",
        file=summary,
    )
    if not cert.ok:
        print(
            f"metering certify: NOT complete: {cert.inequalities[0]}"
            + (f" (and {len(cert.inequalities) - 1} more)" if len(cert.inequalities) > 1 else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from metering.oversight.access import agency_user_name
    from metering.oversight.adoption import read_adoption
    from metering.oversight.render_html import render_html
    from metering.oversight.render_text import render_csv, render_json, render_table
    from metering.oversight.suppression import publish

    if args.agency is not None:
        agency_user_name(args.agency)  # validates the id
    client = _open(settings)
    try:
        adoption = read_adoption(
            client, args.period, args.agency, as_first_counted=args.as_first_counted
        )
    finally:
        client.close()
    report = publish(adoption, args.min_cell_users, args.top)
    renderers = {"table": render_table, "json": render_json, "csv": render_csv, "html": render_html}
    _emit(renderers[args.format](report), args.out)
    if args.out is not None:
        print(f"wrote {args.format} report for {args.period.label} to {args.out}")
    return 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from metering.export import export_period
    from metering.oversight.access import agency_user_name

    if args.agency is not None:
        agency_user_name(args.agency)  # validates the id
    client = _open(settings)
    try:
        manifest = export_period(client, args.period, args.out, args.format, args.agency)
    finally:
        client.close()
    files = json.loads(manifest.read_text())["files"]
    rows = ", ".join(f"{f['name']} {f['rows']}" for f in files)
    print(f"exported {args.period.describe()} to {args.out} ({rows} rows); manifest {manifest}")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from metering.oversight.web import ServeOptions, build_app
    from metering.oversight.web_store import (
        StoreEndpoint,
        WebStoreError,
        check_oversight_users,
    )
    from metering.oversight.web_tls import check_listen, tls_context
    from store.migrations import MigrationError, check_schema_current

    host, port = settings.serve_host, settings.serve_port
    # Configuration errors (SettingsError, exit 2) before the store is read.
    tls = args.tls_cert is not None or args.tls_key is not None
    check_listen(host, tls=tls, insecure_http=args.insecure_http)
    ssl_context = tls_context(args.tls_cert, args.tls_key)
    oversight_users = check_oversight_users(args.oversight_users, settings)
    try:
        endpoint = StoreEndpoint.from_settings(settings)
        client = endpoint.connect(endpoint.reporter)  # the reporter can sign in, or say so
        try:
            check_schema_current(client)
        finally:
            client.close()
    except (WebStoreError, MigrationError) as error:
        print(f"metering serve: {error}", file=sys.stderr)
        return 1
    options = ServeOptions(
        args.min_cell_users,
        args.top,
        public=args.public,
        tls=ssl_context is not None,
        oversight_users=oversight_users,
    )
    app = build_app(endpoint, options)
    scheme = "https" if ssl_context is not None else "http"
    shown = f"[{host}]" if ":" in host else host
    anonymous = (
        "visitors who have not signed in see the published aggregate"
        if args.public
        else "every page asks to sign in"
    )
    print(
        f"metering serve: the oversight page is on {scheme}://{shown}:{port}/ (store "
        f"{endpoint.describe()}; {anonymous}; agency users, {endpoint.reporter.user}"
        f"{''.join(', ' + name for name in sorted(oversight_users))} sign in at /login)",
        flush=True,
    )
    web.run_app(app, host=host, port=port, ssl_context=ssl_context, print=None, access_log=None)
    return 0


def _access(args: argparse.Namespace, settings: Settings) -> int:
    from metering.oversight.access import agency_user_name, agency_user_sql, sql_statements
    from store import describe_store
    from store.local_server import local_server_at

    agency_user_name(args.agency)  # validates the id (AccessError names it)
    if args.users_dir is not None:
        return _write_users_file(args)
    if not args.apply:
        sys.stdout.write(agency_user_sql(args.agency, args.password_sha256))
        return 0
    if settings.clickhouse_url.startswith("chdb://"):
        print(
            f"metering access: {describe_store(settings.clickhouse_url)} has no access control "
            "(no users, roles, quotas or row policies): nothing applied. Use the local server "
            "(infra/clickhouse/start, CLICKHOUSE_URL=http://127.0.0.1:8123), or run the SQL "
            "printed without --apply on a ClickHouse server.",
            file=sys.stderr,
        )
        return 2
    password, digest = _new_password(args.password_sha256)
    local = local_server_at(settings.clickhouse_url)
    if local is not None:
        # The local server keeps users in files (it has no writable access storage).
        path = local.write_agency_user(args.agency, digest)
        running = local.running_pid() is not None
        print(f"wrote user {agency_user_name(args.agency)} for agency {args.agency} to {path}")
        if running:
            print(
                "the local server reads users at start: restart it for the user to take "
                "effect (infra/clickhouse/stop && infra/clickhouse/start)"
            )
        else:
            print("the local server is not running: the user takes effect when it starts")
    else:
        sql = agency_user_sql(args.agency, digest)
        from store import connect

        client = connect(settings.clickhouse_url)
        try:
            for statement in sql_statements(sql):
                client.command(statement)
        finally:
            client.close()
        print(f"applied {len(sql_statements(sql))} statements for agency {args.agency}")
    if password is not None:
        print(f"password (shown once, hand it over securely): {password}")
    return 0


def _new_password(digest: str | None) -> tuple[str | None, str]:
    """(the password to show once, its sha256), or (None, the given digest)."""
    if digest is not None:
        return None, digest
    password = secrets.token_urlsafe(24)
    return password, hashlib.sha256(password.encode()).hexdigest()


def _write_users_file(args: argparse.Namespace) -> int:
    from metering.oversight.access import AccessError, agency_user_name
    from store.local_server import agency_user_xml

    password, digest = _new_password(args.password_sha256)
    try:
        text = agency_user_xml(args.agency, digest)
    except ValueError as error:
        raise AccessError(str(error)) from None
    args.users_dir.mkdir(parents=True, exist_ok=True)
    path = args.users_dir / f"{agency_user_name(args.agency)}.xml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    print(
        f"wrote user {agency_user_name(args.agency)} for agency {args.agency} to {path}; a "
        "ClickHouse server reloads its users.d by itself, the local server at its next start"
    )
    if password is not None:
        print(f"password (shown once, hand it over securely): {password}")
    return 0
