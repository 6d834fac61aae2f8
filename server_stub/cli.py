"""``mcast-ns``: the admin command line of the Notification Server and package servers.

This module owns argument parsing and the presentation of results; every action is a call
into the store or the repository. Commands::

    mcast-ns init [--hostname H ...] [--database postgresql://...]
                                                    create DATA (store, signing key, TLS CA
                                                    and the server's certificate)
    mcast-ns package add DIR --name N               copy, hash and sign a package version;
                                                    the package servers pre-stage it
    mcast-ns package list
    mcast-ns package renew NAME|HASH [--valid-days D]   re-sign with a new validity
    mcast-ns package remove NAME|HASH [--force]     a package, or one version, and its files
    mcast-ns site add NAME --subnet CIDR [...]      a site owns subnets
    mcast-ns pkgserver add --site S --url U         a package server of a site
    mcast-ns computer add GUID [--name NAME] [--secret-file F] [--new-secret]
                                                    register a computer with its secret
    mcast-ns computer list                          computers, secrets' fingerprints, requests
    mcast-ns computer approve GUID                  approve an agent's enrolment request
    mcast-ns cert issue --hostname H [...] --out DIR   a certificate for a package server
    mcast-ns admin token [--new]                    the web console's admin token (DATA/
                                                    console.token, 0600; made when missing)
    mcast-ns task add --package N --command C --targets G1,G2 [...]
    mcast-ns task remove TASK_ID                    no policy lists it any more
    mcast-ns settings show | settings set KEY VALUE Agent Settings of the policy
    mcast-ns status [--json] [--expiry-days N]      task status per computer; packages that
                                                    expired or expire within N days
    mcast-ns serve --bind 127.0.0.1:0 [--mode package-server --site S
                   [--upstream NS_URL --trust NS_DATA/signing.pub]]
                   [--tls-dir DIR | --plain-http] [--rate R --burst B]
                   [--console-allow CIDR ...]      the web console /console (read-only)
                   [--prestage-kbps K]

Every command takes ``--data DIR`` (default: $MCAST_NS_DATA, else ./ns-data). The store is
SQLite in DATA, or the PostgreSQL database ``init --database URL`` recorded in
``DATA/database.url``; every later command opens that one. ``serve``
prints the bound URL (``https://HOST:PORT``) as its first line on stdout; it serves HTTPS
with ``DATA/tls/server.pem`` (or ``--tls-dir DIR``), and plain HTTP only with
``--plain-http``, after a warning on stderr.

Every argument is checked when given (a task's schedule with the agent's own parser, a
setting with the rules the agent reads it by), before the data directory is touched. Every
expected failure is one line on stderr with the exit code of :mod:`mcast.errors`: 2 a bad
argument or a refused change, 3 a trust key that is not a key, 4 a file error (a data
directory not initialised, a package directory that does not exist), 5 a network failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import ssl
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import httpx
import trio

from mcast import argtypes
from mcast.argtypes import Parser, one_line
from mcast.errors import McastError, NetworkError, StorageError, UsageError
from mcast.fleet_auth import fingerprint, new_secret, write_secret
from mcast.snapshot import TrustStore, load_trust_key

from . import console_auth, repo, tls
from .console import DEFAULT_ALLOW
from .db import check_url
from .ratelimit import DEFAULT_BURST, DEFAULT_RATE
from .store import (
    DEFAULT_SETTINGS,
    SERVER_SITE,
    PackageRow,
    Store,
    StoreError,
    TaskRow,
    check_setting,
)

_HASH = re.compile(r"[0-9a-f]{64}")
PRESTAGE_TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # telling a package server, not the copy
DEFAULT_PRESTAGE_KBPS = 10 * 1024  # about 80 Mbit/s: a new package never fills a site's link


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data or os.environ.get("MCAST_NS_DATA") or "ns-data")


_opened: list[Store] = []  # closed by main() when the command ends


def _open(args: argparse.Namespace) -> Store:
    data = _data_dir(args)
    if not (data / repo.KEY_NAME).exists():
        raise StorageError(f"{data} is not initialised; run `mcast-ns init --data {data}`")
    store = Store(data)
    _opened.append(store)
    return store


def cmd_init(args: argparse.Namespace) -> int:
    data = _data_dir(args)
    store = repo.init_data_dir(data, args.database)
    where = store.where
    store.close()
    files = tls.init_tls(data, args.hostname)
    names = ", ".join(tls.cert_hostnames(files.cert))
    print(f"initialised {data} (public key: {data / repo.PUB_NAME}, store: {where})")
    print(f"TLS: CA {tls.tls_dir(data) / tls.CA_CERT} (agents pin it), server certificate "
          f"for {names}")  # fmt: skip
    return 0


def cmd_cert_issue(args: argparse.Namespace) -> int:
    data = _data_dir(args)
    files = tls.issue(tls.tls_dir(data), args.hostname, Path(args.out))
    print(f"certificate for {', '.join(args.hostname)}: {files.cert} (key {files.key})")
    return 0


def cmd_package_add(args: argparse.Namespace) -> int:
    store = _open(args)
    result = repo.add_package(store, Path(args.dir), args.name)
    row = result.row
    verb = "added" if result.changed else "unchanged, kept"
    print(
        f"{verb} package {row.name!r} id {row.package_id} version {row.version} "
        f"hash {row.hash} size {row.size}"
    )
    if result.changed:
        _tell_pkgservers(store, row)
    return 0


def _tell_pkgservers(store: Store, row: PackageRow) -> None:
    """Ask every registered package server to pre-stage the new version now (it replicates
    it from its upstream in the background, bandwidth-capped), so the first agent of a site
    does not wait for it. A server that cannot be told replicates on first request."""
    ca = tls.tls_dir(store.data_dir) / tls.CA_CERT
    verify: ssl.SSLContext | bool = True
    if ca.exists():  # package servers' certificates are issued by the fleet's CA
        verify = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(timeout=PRESTAGE_TIMEOUT, verify=verify) as client:
        for url, _site in store.pkgservers():
            target = f"{url.rstrip('/')}/pkg/{row.hash}/prestage"
            try:
                resp = client.post(target)
                ok = resp.status_code in (200, 202)
                why = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                ok, why = False, " ".join(str(exc).split())[:200] or type(exc).__name__
            if ok:
                print(f"package server {url}: pre-staging ({why})")
            else:
                print(f"mcast-ns: warning: package server {url} not told to pre-stage ({why}); "
                      "it replicates the package on first request", file=sys.stderr)  # fmt: skip


def cmd_package_list(args: argparse.Namespace) -> int:
    for row in _open(args).packages():
        print(f"{row.name}\t{row.package_id}\tv{row.version}\t{row.size}\t{row.hash}")
    return 0


def _package(store: Store, ref: str) -> PackageRow:
    """The package version a NAME (its newest version) or a HASH names."""
    row = store.package_by_hash(ref) if _HASH.fullmatch(ref) else store.latest_package(name=ref)
    if row is None:
        raise UsageError(f"unknown package {ref!r} (see `package list`)")
    return row


def cmd_package_renew(args: argparse.Namespace) -> int:
    if args.valid_days > 36_600:
        raise UsageError(f"--valid-days {args.valid_days:g}: at most 36600 days")
    store = _open(args)
    old = _package(store, args.package)
    row = repo.renew_package(store, old, valid_days=args.valid_days)
    snap = repo.load_snapshot(store.data_dir, row.hash)
    print(f"renewed package {row.name!r} version {old.version} as version {row.version} "
          f"hash {row.hash}, valid until {_utc(snap.expires)} (same content)")  # fmt: skip
    _tell_pkgservers(store, row)
    return 0


def cmd_package_remove(args: argparse.Namespace) -> int:
    """Remove a package (NAME: every version) or one version (HASH). A package a task still
    runs is refused unless --force, which removes those tasks too; so is the newest version
    (the tasks would roll back to an older one, which agents refuse)."""
    store = _open(args)
    row = _package(store, args.package)
    versions = store.package_versions(row.package_id)
    by_name = not _HASH.fullmatch(args.package)
    doomed = versions if by_name else [row]
    tasks = store.tasks_of_package(row.package_id)
    if tasks and (by_name or row.hash == versions[0].hash):
        if not args.force:
            raise UsageError(
                f"package {row.name!r} is used by {len(tasks)} task(s) ({', '.join(tasks[:3])}"
                f"{', ...' if len(tasks) > 3 else ''}); --force removes them too"
            )
    else:
        tasks = []
    removed = store.remove(tasks=tasks, packages=[v.hash for v in doomed])
    for v in doomed:
        repo.remove_files(store.data_dir, v.hash)
    what = "package" if by_name else f"version {row.version} of package"
    print(f"removed {what} {row.name!r} ({len(doomed)} version(s), {removed} task(s))")
    return 0


def cmd_task_remove(args: argparse.Namespace) -> int:
    if _open(args).remove(tasks=[args.task_id], packages=[]) == 0:
        raise UsageError(f"unknown task {args.task_id}")
    print(f"removed task {args.task_id}")
    return 0


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when))


def expiry_warnings(store: Store, within_days: float, now: float) -> list[dict[str, object]]:
    """The newest version of every package that has expired or expires within
    ``within_days``: no agent can verify an expired one (renew it)."""
    out: list[dict[str, object]] = []
    newest: dict[str, PackageRow] = {}
    for row in store.packages():  # by name, version: the last one is the newest
        newest[row.package_id] = row
    for row in newest.values():
        try:
            expires = repo.load_snapshot(store.data_dir, row.hash).expires
        except repo.RepoError:
            continue
        if expires - now <= within_days * repo.DAY_S:
            out.append({"package": row.name, "version": row.version, "hash": row.hash,
                        "expires": expires, "expired": expires <= now})  # fmt: skip
    return out


def cmd_site_add(args: argparse.Namespace) -> int:
    _open(args).add_site(args.name, args.subnet or [])
    print(f"site {args.name!r}: {', '.join(args.subnet or []) or 'no subnets'}")
    return 0


def cmd_pkgserver_add(args: argparse.Namespace) -> int:
    url = args.url + "/"
    _open(args).add_pkgserver(args.site, url)
    print(f"package server {url} serves site {args.site!r}")
    return 0


def cmd_computer_add(args: argparse.Namespace) -> int:
    """Register the computer with a fresh secret (unless it has one and ``--new-secret`` is
    not given): written to ``--secret-file`` (mode 0600), else printed this once."""
    store = _open(args)
    found = store.secret_of(args.guid)
    if found is not None and found[1] and not args.new_secret:
        store.add_computer(args.guid, args.name or "")
        print(f"computer {args.guid} keeps its secret (fingerprint {fingerprint(found[0])}; "
              "--new-secret replaces it)")  # fmt: skip
        return 0
    secret = new_secret()
    if args.secret_file:
        write_secret(Path(args.secret_file), secret)  # written before the store knows it
    store.set_secret(args.guid, secret, args.name or "")
    where = f"written to {args.secret_file}" if args.secret_file else f"secret {secret.hex()}"
    print(f"computer {args.guid}: {where} (fingerprint {fingerprint(secret)})")
    return 0


def cmd_computer_list(args: argparse.Namespace) -> int:
    for guid, name, state, secret in _open(args).computers():
        fp = fingerprint(bytes.fromhex(secret)) if secret else "-"
        print(f"{guid}\t{state}\t{fp}\t{name}")
    return 0


def cmd_computer_approve(args: argparse.Namespace) -> int:
    store = _open(args)
    found = store.secret_of(args.guid)
    store.approve(args.guid)
    fp = fingerprint(found[0]) if found else "-"
    print(f"computer {args.guid} approved (fingerprint {fp})")
    return 0


def cmd_admin_token(args: argparse.Namespace) -> int:
    """The web console's admin token (made, 0600, when missing; ``--new`` replaces it and
    ends every console session)."""
    _open(args).close()
    data = _data_dir(args)
    try:
        token = console_auth.admin_token(data, new=args.new)
    except OSError as exc:
        raise StorageError(f"cannot write {console_auth.token_path(data)}: {exc}") from None
    print(f"{token.hex()}\t(the console's admin token, in {console_auth.token_path(data)})")
    return 0


def cmd_task_add(args: argparse.Namespace) -> int:
    store = _open(args)
    package = store.latest_package(name=args.package)
    if package is None:
        raise UsageError(f"unknown package {args.package!r} (add it with `package add`)")
    targets = args.targets
    task = TaskRow(
        task_id=str(uuid.uuid4()),
        package_id=package.package_id,
        command=args.command,
        schedule=args.schedule,
        credentials=args.credentials,
        run_from=args.run_from,
    )
    store.add_task(task, targets)
    print(f"task {task.task_id} runs {package.name!r} on {len(targets)} computer(s)")
    return 0


def cmd_settings_show(args: argparse.Namespace) -> int:
    """Every setting; one stored by an older version and refused now is marked, with the
    default the server serves instead."""
    store = _open(args)
    sites = store.sites()
    for key, value in sorted(store.settings().items()):
        try:
            check_setting(key, str(value))
            if key == SERVER_SITE and value and value not in sites:
                raise StoreError(f"unknown site {value!r}")
        except StoreError as exc:
            default = DEFAULT_SETTINGS.get(key)
            print(f"{key} = {value}  (refused: {one_line(exc)}; the server uses {default!r})")
            continue
        print(f"{key} = {value}")
    return 0


def cmd_settings_set(args: argparse.Namespace) -> int:
    check_setting(args.key, args.value)  # a bad value is refused before the store is opened
    value = _open(args).set_setting(args.key, args.value)
    print(f"{args.key} = {value}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = _open(args)
    rows = store.task_status()
    counts = store.queue_counts()
    expiring = expiry_warnings(store, args.expiry_days, time.time())
    if args.json:
        status = [r.__dict__ for r in rows]
        print(json.dumps({"queue": counts, "status": status, "expiring": expiring}))
        return 0
    for e in expiring:
        when = "expired" if e["expired"] else "expires"
        print(f"warning: package {e['package']!r} version {e['version']} {when} at "
              f"{_utc(float(str(e['expires'])))}; `mcast-ns package renew {e['package']}` "
              "re-signs it")  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"task status ({counts['processed']}/{counts['events']} events processed)")
    for col in ("task", "package", "computer", "state", "exit", "multicast", "http", "events"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.task_id[:8],
            r.package_name,
            r.computer_name or r.computer,
            r.state,
            "" if r.exit_code is None else str(r.exit_code),
            str(r.bytes_multicast),
            str(r.bytes_http),
            str(r.events),
        )
    Console().print(table)
    return 0


async def _serve_main(args: argparse.Namespace, files: tls.CertFiles | None) -> None:
    from .app import create_app
    from .serve import serve

    trust = None
    if args.upstream:
        trust = TrustStore.of(load_trust_key(_trust_path(args)))
    app = create_app(
        _data_dir(args),
        mode=args.mode,
        site=args.site,
        public_url=args.public_url,
        upstream=args.upstream,
        trust=trust,
        rate=args.rate,
        burst=args.burst,
        console_allow=tuple(args.console_allow or DEFAULT_ALLOW),
        prestage_bps=args.prestage_kbps * 1024,
    )
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve, app, args.bind, tls=files))
        print(url, flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _trust_path(args: argparse.Namespace) -> Path:
    return Path(args.trust) if args.trust else _data_dir(args) / repo.PUB_NAME


def _oserror(exc: BaseException) -> OSError | None:
    """The first OSError in ``exc`` or in the exception groups around it."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _oserror(inner)) is not None:
                return found
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    if args.mode == "package-server" and not args.site:
        raise UsageError("--mode package-server needs --site")
    if args.upstream and args.mode != "package-server":
        raise UsageError("--upstream is for --mode package-server")
    if args.upstream:
        load_trust_key(_trust_path(args))  # missing: exit 4; not a key: exit 3
    data = _data_dir(args)
    if args.mode == "package-server":
        try:
            (data / "packages").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {data / 'packages'}: {exc.strerror}") from None
    else:
        _open(args).close()
    files = None
    if args.plain_http:
        print("mcast-ns: warning: serving plain HTTP: package keys, policies and agent "
              "requests travel unencrypted", file=sys.stderr)  # fmt: skip
    else:
        files = tls.server_files(Path(args.tls_dir) if args.tls_dir else tls.tls_dir(data))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        trio.run(_serve_main, args, files)
    except (OSError, BaseExceptionGroup) as exc:  # trio may wrap it in a group
        found = _oserror(exc)
        if found is None:
            raise
        raise NetworkError(f"cannot serve on {args.bind}: {found.strerror or found}") from None
    return 0


def _database_url(value: str) -> str:
    try:
        return check_url(value)
    except UsageError as exc:
        argtypes.bad(str(exc))


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--data", help="data directory (default $MCAST_NS_DATA or ./ns-data)")
    p = Parser(prog="mcast-ns", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    a = sub.add_parser("init", parents=[common], help="create the data directory")
    a.add_argument(
        "--hostname",
        action="append",
        type=argtypes.hostname,
        help="a name or address agents reach the server by, for its TLS certificate "
        "(repeatable; default localhost and 127.0.0.1)",
    )
    a.add_argument(
        "--database",
        type=_database_url,
        help="keep the store in this PostgreSQL database (postgresql://USER[:PASSWORD]@HOST"
        "[:PORT]/DB, or with ?host=/socket/dir); recorded in DATA/database.url (0600) for "
        "every later command. Default: SQLite in DATA",
    )
    a.set_defaults(fn=cmd_init)

    cert = sub.add_parser("cert", help="TLS certificates").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND"
    )
    a = cert.add_parser("issue", parents=[common], help="a certificate for a package server")
    a.add_argument("--hostname", action="append", required=True, type=argtypes.hostname,
                   help="a name or address the server is reached by (repeatable)")  # fmt: skip
    a.add_argument("--out", required=True, help="directory for server.pem and server.key")
    a.set_defaults(fn=cmd_cert_issue)

    pkg = sub.add_parser("package", help="packages").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND"
    )
    a = pkg.add_parser("add", parents=[common], help="add or update a package")
    a.add_argument(
        "dir",
        type=argtypes.existing_path,
        help="directory (or single file) with the package's files",
    )
    a.add_argument("--name", required=True, type=argtypes.name)
    a.set_defaults(fn=cmd_package_add)
    pkg.add_parser("list", parents=[common]).set_defaults(fn=cmd_package_list)
    a = pkg.add_parser("renew", parents=[common], help="re-sign a package with a new validity")
    a.add_argument("package", type=argtypes.name, help="package name or hash")
    a.add_argument(
        "--valid-days",
        type=argtypes.positive_days,
        default=repo.DEFAULT_VALID_DAYS,
        help=f"days the new snapshot is valid (default {repo.DEFAULT_VALID_DAYS:g})",
    )
    a.set_defaults(fn=cmd_package_renew)
    a = pkg.add_parser("remove", parents=[common], help="remove a package or one version")
    a.add_argument("package", type=argtypes.name, help="package name (every version) or hash")
    a.add_argument("--force", action="store_true", help="also remove the tasks that run it")
    a.set_defaults(fn=cmd_package_remove)

    site = sub.add_parser("site", help="sites").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND"
    )
    a = site.add_parser("add", parents=[common], help="add a site, or subnets to a site")
    a.add_argument("name", type=argtypes.name)
    a.add_argument(
        "--subnet",
        action="append",
        type=argtypes.subnet,
        help="CIDR owned by the site (repeatable)",
    )
    a.set_defaults(fn=cmd_site_add)

    ps = sub.add_parser("pkgserver", help="package servers").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND"
    )
    a = ps.add_parser("add", parents=[common], help="register a package server of a site")
    a.add_argument("--site", required=True, type=argtypes.name)
    a.add_argument(
        "--url",
        required=True,
        type=argtypes.http_url,
        help="base URL, e.g. http://127.0.0.1:8081/",
    )
    a.set_defaults(fn=cmd_pkgserver_add)

    comp = sub.add_parser("computer", help="computers").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND"
    )
    a = comp.add_parser("add", parents=[common], help="register a computer and its secret")
    a.add_argument("guid", type=argtypes.guid)
    a.add_argument("--name", type=argtypes.name)
    a.add_argument("--secret-file", help="write the secret here (mode 0600), not to stdout")
    a.add_argument("--new-secret", action="store_true", help="replace the computer's secret")
    a.set_defaults(fn=cmd_computer_add)
    comp.add_parser("list", parents=[common], help="computers and enrolment requests").set_defaults(
        fn=cmd_computer_list
    )
    a = comp.add_parser("approve", parents=[common], help="approve an enrolment request")
    a.add_argument("guid", type=argtypes.guid)
    a.set_defaults(fn=cmd_computer_approve)

    adm = sub.add_parser("admin", help="the web console's administrator").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND"
    )
    a = adm.add_parser("token", parents=[common], help="print the console's admin token")
    a.add_argument("--new", action="store_true", help="replace it (ends every console session)")
    a.set_defaults(fn=cmd_admin_token)

    task = sub.add_parser("task", help="tasks").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND"
    )
    a = task.add_parser("add", parents=[common], help="run a package on computers")
    a.add_argument("--package", required=True, type=argtypes.name, help="package name")
    a.add_argument(
        "--command", required=True, type=argtypes.command_line, help="command line to run"
    )
    a.add_argument(
        "--targets",
        required=True,
        type=argtypes.guid_list,
        help="comma-separated computer GUIDs",
    )
    a.add_argument(
        "--schedule",
        default="asap",
        type=argtypes.schedule,
        help="asap, an ISO 8601 time, a window START/END (ISO 8601) or a daily HH:MM/HH:MM",
    )
    a.add_argument(
        "--credentials",
        "--run-as",
        dest="credentials",
        default="system",
        type=argtypes.name,
        help="the user the command runs as on the agent: 'system' (default) for the agent's "
        "--run-as-default (nobody), 'root' only when named",
    )
    a.add_argument("--run-from", default="agent", choices=["agent", "server"])
    a.set_defaults(fn=cmd_task_add)
    a = task.add_parser("remove", parents=[common], help="remove a task: no policy lists it")
    a.add_argument("task_id", type=argtypes.guid)
    a.set_defaults(fn=cmd_task_remove)

    st = sub.add_parser("settings", help="Agent Settings").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND"
    )
    st.add_parser("show", parents=[common]).set_defaults(fn=cmd_settings_show)
    a = st.add_parser("set", parents=[common])
    a.add_argument("key")
    a.add_argument("value")
    a.set_defaults(fn=cmd_settings_set)

    a = sub.add_parser("status", parents=[common], help="task status per computer")
    a.add_argument("--json", action="store_true")
    a.add_argument(
        "--expiry-days",
        type=argtypes.at_least(0),
        default=7,
        help="warn about packages that expire within this many days (default 7)",
    )
    a.set_defaults(fn=cmd_status)

    a = sub.add_parser("serve", parents=[common], help="serve over HTTP")
    a.add_argument(
        "--bind",
        default="127.0.0.1:0",
        type=argtypes.host_port,
        help="HOST:PORT (port 0: pick one)",
    )
    a.add_argument("--mode", default="notification", choices=["notification", "package-server"])
    a.add_argument("--site", type=argtypes.name, help="the site a package server serves")
    a.add_argument(
        "--public-url", type=argtypes.http_url, help="base URL agents reach this server at"
    )
    a.add_argument(
        "--upstream",
        type=argtypes.http_url,
        help="package server: fetch missing packages from this URL",
    )
    a.add_argument(
        "--trust", type=argtypes.trust_key, help="PEM public key that signs upstream snapshots"
    )
    a.add_argument("--tls-dir", help="directory with server.pem and server.key (default DATA/tls)")
    a.add_argument("--plain-http", action="store_true", help="serve without TLS (warns)")
    a.add_argument(
        "--rate",
        type=argtypes.positive_seconds,
        default=DEFAULT_RATE,
        help=f"requests per second per computer (default {DEFAULT_RATE:g})",
    )
    a.add_argument(
        "--burst",
        type=argtypes.at_least(1),
        default=int(DEFAULT_BURST),
        help=f"requests a computer may make at once (default {DEFAULT_BURST:g})",
    )
    a.add_argument(
        "--console-allow",
        action="append",
        type=argtypes.subnet,
        metavar="CIDR",
        help="addresses the read-only web console /console answers (repeatable; default "
        "loopback only)",
    )
    a.add_argument(
        "--prestage-kbps",
        type=argtypes.at_least(0),
        default=DEFAULT_PRESTAGE_KBPS,
        help="package server: KiB/s at most read from upstream when it pre-stages a new "
        f"package (0: no cap; default {DEFAULT_PRESTAGE_KBPS})",
    )
    a.add_argument("-v", "--verbose", action="store_true")
    a.set_defaults(fn=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and its exit code."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.fn(args))
    except McastError as exc:
        print(f"mcast-ns: error: {one_line(exc)}", file=sys.stderr)
        return int(exc.exit_code)
    finally:
        while _opened:
            _opened.pop().close()


if __name__ == "__main__":
    sys.exit(main())
