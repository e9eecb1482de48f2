"""The command line: parse, call one function, print. No logic lives here.

Exit codes: 0 success; 1 runtime failure; 2 usage or configuration error;
3 session finished but some files could not be read; 4 the vault refused;
5 the vault is unreachable; 6 a key that cannot be used (identity missing,
unreadable or not matching, an archive it cannot decrypt).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from eventbak import __version__, runner
from eventbak.config import (
    DEFAULT_ARCHIVE_SIZE,
    Compression,
    Config,
    check_vault_url,
    default_state_dir,
    default_vault_url,
    load_config,
    parse_archive_size,
    parse_compression,
)
from eventbak.core import events as ev
from eventbak.core.log import TornTail, head_of, iter_log
from eventbak.core.state import IllegalTransition, SessionState, State, apply, describe_machines
from eventbak.errors import EXIT_PARTIAL, EventbakError, LogCorrupt, UsageError
from eventbak.keys import (
    identities_for,
    passphrase_identities,
    passphrase_recipient,
    recipients_for,
    recover_passphrase_keys,
    write_identity,
)
from eventbak.pipeline.coordinator import (
    DEFAULT_GRACE,
    BackupRequest,
    Outcome,
    Progress,
    RunOptions,
    parse_duration,
    parse_until,
    vault_ref,
)
from eventbak.pipeline.scanner import normalize_roots
from eventbak.statedir import StateDir, lock_holder, log_path, members, read_state
from eventbak.vaults import open_vault

if TYPE_CHECKING:
    from eventbak.daemon import service


@dataclass
class Ctx:
    config: Config
    config_path: Path | None
    state_dir: Path
    verbose: int


def _fail(exc: EventbakError) -> NoReturn:
    click.echo(f"eventbak: error: {exc}", err=True)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    """Turns every EventbakError into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EventbakError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("eventbak: interrupted", err=True)
            sys.exit(130)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _when(t: float) -> str:
    if not t:
        return "-"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EVENTBAK_CONFIG",
    help="TOML config file (env EVENTBAK_CONFIG).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EVENTBAK_STATE_DIR",
    help="Where the event log and staging live (env EVENTBAK_STATE_DIR).",
)
@click.option("-v", "--verbose", count=True, help="More detail (backup lists every archive).")
@click.version_option(__version__, prog_name="eventbak")
@click.pass_context
def main(
    ctx: click.Context, config_path: Path | None, state_dir: Path | None, verbose: int
) -> None:
    """Event-sourced backups into local, S3 and Glacier vaults."""
    try:
        config = load_config(config_path) if config_path else Config()
    except EventbakError as exc:
        _fail(exc)
    if state_dir is None:
        state_dir = Path(config.state_dir).expanduser() if config.state_dir else default_state_dir()
    ctx.obj = Ctx(config, config_path, state_dir.absolute(), verbose)


# -- backup -----------------------------------------------------------------


def _requests(
    c: Ctx,
    paths: tuple[str, ...],
    vault: str | None,
    archive_size: str | None,
    compression: str | None,
    recipient: tuple[str, ...] = (),
    rule: Rule | None = None,
) -> list[BackupRequest]:
    try:
        comp_override = parse_compression(compression) if compression else None
    except ValueError as exc:
        raise UsageError(f"--compression: {exc}") from None
    try:
        size_override = parse_archive_size(archive_size) if archive_size else None
    except ValueError as exc:
        raise UsageError(f"--archive-size: {exc}") from None
    cfg = c.config
    recipients = recipients_for(cfg.encryption, recipient)
    command = cfg.encryption.passphrase_command
    if command and not recipient:
        recipients += (passphrase_recipient(c.state_dir, command),)

    if vault:
        check_vault_url(vault)

    def vault_for(name: str | None) -> tuple[str, int, dict[str, object]]:
        if vault:
            # a --vault URL is complete in itself: options go in its query
            return vault, size_override or DEFAULT_ARCHIVE_SIZE, {}
        if name is None and len(cfg.vaults) == 1:
            name = next(iter(cfg.vaults))
        elif name is None and len(cfg.vaults) > 1:
            raise UsageError(
                f"the config has {len(cfg.vaults)} vaults ({', '.join(cfg.vaults)}): "
                "say which with --vault URL"
            )
        if name is not None:
            v = cfg.vaults[name]
            return v.url, size_override or parse_archive_size(v.archive_size), v.options()
        return default_vault_url(), size_override or DEFAULT_ARCHIVE_SIZE, {}

    def sources(raw: list[str], where: str) -> list[bytes]:
        out = []
        for p in raw:
            b = os.fsencode(os.path.expanduser(p))
            if not os.path.lexists(b):
                raise UsageError(f"{where}: source path {p} does not exist")
            out.append(b)
        return normalize_roots(out)

    rule = rule or Rule()
    if paths:
        url, size, opts = vault_for(None)
        return [
            BackupRequest(
                "cli",
                sources(list(paths), "backup"),
                url,
                size,
                comp_override or Compression("auto"),
                [],
                opts,
                recipients,
                full=rule.full,
                ignore_inode=rule.ignore_inode,
                ignore_ctime=rule.ignore_ctime,
            )
        ]
    if not cfg.datasets:
        raise UsageError("nothing to back up: give PATH... or a --config with [[datasets]]")
    reqs = []
    for ds in cfg.datasets:
        url, size, opts = vault_for(ds.vault)
        reqs.append(
            BackupRequest(
                ds.name,
                sources(ds.paths, f"dataset {ds.name}"),
                url,
                size,
                comp_override or parse_compression(ds.compression),
                list(ds.exclude),
                opts,
                recipients,
                list(ds.always_compress),
                list(ds.never_compress),
                full=rule.full,
                ignore_inode=rule.ignore_inode or ds.ignore_inode,
                ignore_ctime=rule.ignore_ctime or ds.ignore_ctime,
            )
        )
    return reqs


@dataclass(frozen=True)
class Rule:
    """What a new session stores: everything (`full`), or what changed since
    the last completed one, by a rule with or without inodes and ctimes."""

    full: bool = False
    ignore_inode: bool = False
    ignore_ctime: bool = False


class _ProgressLine:
    def __init__(self) -> None:
        self.width = 0

    def __call__(self, p: Progress) -> None:
        rate = p.bytes / p.elapsed / 1e6 if p.elapsed > 0 else 0.0
        line = (
            f"  {p.files} files, {_human(p.bytes)}, {rate:.1f} MB/s, "
            f"archives {p.archives_uploaded}/{p.archives_sealed} uploaded/sealed"
        )
        click.echo("\r" + line.ljust(self.width), nl=False, err=True)
        self.width = len(line)

    def done(self) -> None:
        if self.width:
            click.echo("\r" + " " * self.width + "\r", nl=False, err=True)


def _summary(o: Outcome) -> dict[str, Any]:
    s = o.session
    return {
        "session": s.id,
        "dataset": s.dataset,
        "state": s.state,
        "vault": s.vault,
        "files": s.files,
        "bytes": s.bytes,
        "archives": s.archives_uploaded,
        "bytes_uploaded": s.bytes_uploaded,
        "skipped": [{"path": ev.show_path(p), "reason": r} for p, r in s.skipped.items()],
        "changed": [{"path": ev.show_path(p), "detail": d} for p, d in s.changed.items()],
        "resumed": o.resumed,
        "paused_for": o.paused_for,
        "interruptions": s.interruptions,
        "elapsed": round(o.elapsed, 3),
        "run_files": o.run_files,
        "run_bytes": o.run_bytes,
        "mb_per_s": round(o.run_bytes / o.elapsed / 1e6, 1) if o.elapsed > 0 else 0.0,
        "error": o.error,
        "base": s.base,
        "point_in_time": _point_in_time(s),
    }


@main.command()
@click.argument("paths", nargs=-1)
@click.option(
    "--vault",
    help="Vault URL: file:///dir, s3://BUCKET/PREFIX?storage_class=...&endpoint_url=...&"
    "region=...&part_size=...&concurrency=..., or glacier://VAULT?region=...",
)
@click.option("--archive-size", help="Archive size limit: 123, 64KiB, 128MiB, 1GiB.")
@click.option("--compression", help="auto | none | zstd[:LEVEL]")
@click.option(
    "--recipient",
    "-r",
    multiple=True,
    metavar="AGE1...",
    help="Encrypt archives to this age public key (repeatable; replaces the config's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
@click.option(
    "--new-session",
    is_flag=True,
    help="Abandon an unfinished session (its uploaded archives stay) and start anew.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Store every file, not only what changed since the last completed session.",
)
@click.option("--ignore-inode", is_flag=True, help="Changed files: do not compare inode numbers.")
@click.option("--ignore-ctime", is_flag=True, help="Changed files: do not compare ctimes.")
@click.option(
    "--upload-limit",
    metavar="RATE",
    help="Upload at most this fast over all parts: 10MiB/s, off, or a timetable "
    "('08:00,512KiB/s 23:00,off'); default: [schedule] upload_limit.",
)
@click.option("--until", "until", metavar="HH:MM", help="Pause when this local time comes.")
@click.option("--max-duration", metavar="DURATION", help="Pause after this long: 90s, 15m, 2h.")
@click.option(
    "--grace",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE,
    show_default=True,
    help="After a stop request, how long in-flight work may go on.",
)
@click.pass_obj
def backup(
    c: Ctx,
    paths: tuple[str, ...],
    vault: str | None,
    archive_size: str | None,
    compression: str | None,
    recipient: tuple[str, ...],
    as_json: bool,
    new_session: bool,
    full: bool,
    ignore_inode: bool,
    ignore_ctime: bool,
    upload_limit: str | None,
    until: str | None,
    max_duration: str | None,
    grace: float,
) -> None:
    """Back up PATHs, or every dataset of the config (one session each).
    An unfinished session for the same paths and vault is resumed where it
    stopped. A new session stores what changed since the last completed one
    (unless --full); it restores as a whole point in time all the same."""
    rule = Rule(full, ignore_inode, ignore_ctime)
    reqs = _requests(c, paths, vault, archive_size, compression, recipient, rule)
    deadline = _deadline(until, max_duration)
    options = RunOptions(
        deadline=deadline, grace=grace, new_session=new_session,
        **_upload_limit(c, upload_limit),
    )  # fmt: skip

    def opened(sd: StateDir) -> None:
        if sd.torn is not None:
            click.echo(
                f"eventbak: warning: cut a torn record at offset {sd.torn.offset} off the end "
                f"of the event log ({sd.torn.dropped} bytes: {sd.torn.reason})",
                err=True,
            )

    shown: list[_ProgressLine] = []

    def starting(req: BackupRequest, previous: SessionState | None) -> None:
        if as_json:
            return
        click.echo(f"state dir: {c.state_dir}")
        click.echo(f"vault:     {req.vault_url}")
        if previous is None or (req.full and not new_session):
            return
        if new_session:
            click.echo(f"abandoning unfinished session {previous.id}")
        else:
            why = ", ".join(previous.pauses + ["crash"] * previous.crashes)
            click.echo(
                f"resuming session {previous.id} ({previous.state}"
                + (f"; interrupted before: {why}" if why else "")
                + f"): {previous.files} files, {_human(previous.bytes)} already safe, "
                f"{previous.archives_uploaded} archives uploaded"
            )

    def progress(req: BackupRequest) -> _ProgressLine | None:
        show = _ProgressLine() if (not as_json and sys.stderr.isatty()) else None
        shown[:] = [show] if show else []
        return show

    def finished(outcome: Outcome, sd: StateDir) -> None:
        for show in shown:
            show.done()
        if as_json:
            return
        _print_outcome(outcome)
        if c.verbose:
            for a in sd.state.archives_of(outcome.session.id):
                click.echo(
                    f"  archive {a.id} {a.state}: {_human(a.size)}, "
                    f"{a.count} members, sha256 {a.sha256[:16]}"
                    + (f" ({a.discard_reason})" if a.discard_reason else "")
                )

    hooks = runner.Hooks(starting=starting, progress=progress, finished=finished)
    report = runner.run(c.state_dir, reqs, options, hooks, opened=opened)
    if as_json:
        out: Any = [_summary(o) for o in report.outcomes]
        click.echo(json.dumps(out[0] if len(out) == 1 else out, indent=2))
    code = runner.exit_code(report.outcomes)
    if code:
        sys.exit(code)


def _upload_limit(c: Ctx, given: str | None) -> dict[str, Any]:
    """RunOptions' upload_limit and local_now: `--upload-limit`, else the
    config's `[schedule] upload_limit` (at its timezone's wall time)."""
    from datetime import datetime

    from eventbak.daemon import bandwidth, schedule

    text = given if given is not None else c.config.schedule.upload_limit
    try:
        table = bandwidth.parse_limit(text, key="--upload-limit" if given else "upload_limit")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if table.constant and table.entries[0][1] is None:
        return {}
    tz = schedule.parse_timezone(c.config.schedule.timezone)
    return {"upload_limit": table, "local_now": lambda: datetime.now(tz)}


@main.command()
@click.option(
    "--grace",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE,
    show_default=True,
    help="After a stop request (or a window's end), how long in-flight work may go on.",
)
@click.pass_obj
def daemon(c: Ctx, grace: float) -> None:
    """Back up the config's datasets inside the [schedule] windows, for as
    long as it runs (under supervisord or systemd): a new session every
    [schedule] every, an unfinished one resumed in the next window. SIGTERM
    or SIGINT: the session running pauses, exit 0. Lines on stderr: JSON
    when it is not a terminal."""
    from eventbak.daemon import service

    def load() -> service.Plan:
        """The config read again (SIGHUP): a ConfigError keeps the old one."""
        if c.config_path is None:
            raise UsageError("no --config file to read again")
        fresh = Ctx(load_config(c.config_path), c.config_path, c.state_dir, c.verbose)
        return _daemon_plan(fresh, grace)

    plan = _daemon_plan(c, grace)
    as_json = not sys.stderr.isatty()

    def say(line: dict[str, Any]) -> None:
        line = {"at": round(time.time(), 3), "pid": os.getpid(), **line}
        if as_json:
            click.echo(json.dumps(line), err=True)
        else:
            rest = " ".join(f"{k}={v}" for k, v in line.items() if k not in ("at", "pid"))
            click.echo(f"{_when(line['at'])} {rest}", err=True)

    service.run(c.state_dir, plan, say, load)


def _daemon_plan(c: Ctx, grace: float) -> service.Plan:
    """The daemon's plan from a config: its datasets, schedule, hooks."""
    from eventbak.daemon import schedule, service

    cfg = c.config.schedule
    return service.Plan(
        reqs=_requests(c, (), None, None, None),
        windows=schedule.parse_windows(cfg.windows),
        tz=schedule.parse_timezone(cfg.timezone),
        every=schedule.parse_every(cfg.every),
        max_failures=cfg.max_failures,
        options=RunOptions(grace=grace, **_upload_limit(c, None)),
        metrics_file=Path(cfg.metrics_file) if cfg.metrics_file else None,
        hooks={ds.name: (list(ds.before), list(ds.after)) for ds in c.config.datasets},
    )


def _deadline(until: str | None, max_duration: str | None) -> float | None:
    times = []
    try:
        if until:
            times.append(parse_until(until))
        if max_duration:
            times.append(time.time() + parse_duration(max_duration))
    except ValueError as exc:
        raise UsageError(
            f"--{'until' if until and 'time of day' in str(exc) else 'max-duration'}: {exc}"
        ) from None
    return min(times) if times else None


def _print_outcome(o: Outcome) -> None:
    s = o.session
    rate = o.run_bytes / o.elapsed / 1e6 if o.elapsed > 0 else 0.0
    click.echo(
        f"session {s.id} {s.state}: {s.files} files, {_human(s.bytes)} in "
        f"{s.archives_uploaded} archives ({_human(s.bytes_uploaded)} stored), "
        f"{o.elapsed:.1f} s, {rate:.1f} MB/s"
    )
    pit = _point_in_time(s)
    if pit is not None:
        since = f"only what changed since session {s.base}" if s.base else "a full session"
        click.echo(f"  point in time: {pit['files']} files, {_human(pit['bytes'])} ({since})")
    for path, reason in s.skipped.items():
        click.echo(f"  skipped {ev.show_path(path)}: {reason}")
    for path, detail in s.changed.items():
        click.echo(f"  changed: {ev.show_path(path)} ({detail})")
    if o.error:
        click.echo(f"eventbak: error: {o.error} (session paused)", err=True)
    elif o.paused_for:
        click.echo(f"paused ({o.paused_for}); run backup again to resume")


# -- restore ----------------------------------------------------------------


@main.command()
@click.argument("patterns", nargs=-1)
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to restore into (entries land at DIR/<original path>).",
)
@click.option("--session", help="Restore this session (id or unique prefix), not the latest.")
@click.option("--overwrite", is_flag=True, help="Replace files that already exist.")
@click.option(
    "--vault",
    metavar="URL",
    help="Read the archives from this vault URL (it must be the vault they are in; "
    "use it to give options such as endpoint_url). Default: the config's vault with "
    "that location, else the URL of the latest backup into it.",
)
@click.option(
    "--tier",
    type=click.Choice(["Standard", "Bulk", "Expedited"]),
    default="Standard",
    show_default=True,
    help="How fast cold archives are thawed (Deep Archive: Standard or Bulk only).",
)
@click.option(
    "--thaw-days",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    metavar="N",
    help="Days a thawed S3 copy stays readable.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How often to check on thaws and retrieval jobs.",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="Request the thaws and exit without restoring if any archive is not readable "
    "yet; run again later (Glacier retrieval jobs are not resumed yet: a new run starts "
    "new ones).",
)
@click.option(
    "--identity",
    "-i",
    type=click.Path(path_type=Path, dir_okay=False),
    help="age identity file (secret key) for encrypted archives; default: "
    "[encryption] identity_file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def restore(
    c: Ctx,
    patterns: tuple[str, ...],
    to: Path,
    session: str | None,
    overwrite: bool,
    vault: str | None,
    tier: str,
    thaw_days: int,
    poll: float,
    no_wait: bool,
    identity: Path | None,
    as_json: bool,
) -> None:
    """Restore the latest backup (or --session) of everything, or of PATH_OR_GLOBs.

    Archives in a cold class (S3 GLACIER, DEEP_ARCHIVE, or a Glacier vault) are
    thawed first: only those holding the selected paths. Each archive is read
    once and checked against its logged SHA-256; nothing of a damaged archive is
    left under its final name."""
    from eventbak.restore import VaultResolver, parse_tier
    from eventbak.restore import restore as do_restore

    state, _ = _read_state(c)
    configured = [(v.url, v.options()) for v in c.config.vaults.values()]
    identities, warning = identities_for(c.config.encryption, identity)
    if warning:
        click.echo(f"eventbak: warning: {warning}", err=True)
    command = c.config.encryption.passphrase_command

    def say(line: str) -> None:
        click.echo(f"eventbak: {line}", err=True)

    with VaultResolver(state, vault, configured) as vault_for:
        if identities is None and command:
            identities = passphrase_identities(c.state_dir, command, state, vault_for)
        report = do_restore(
            state,
            c.state_dir,
            [os.fsencode(p) for p in patterns],
            to,
            session=session,
            overwrite=overwrite,
            vault_for=vault_for,
            tier=parse_tier(tier),
            thaw_days=thaw_days,
            poll=poll,
            wait=not no_wait,
            report=say,
            identities=identities,
        )
    for w in report.warnings:
        click.echo(f"eventbak: warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps(report.__dict__, indent=2))
    elif report.pending:
        what = "1 archive is" if report.pending == 1 else f"{report.pending} archives are"
        click.echo(
            f"nothing restored yet: {what} not readable yet; run the same restore again later"
        )
    else:
        click.echo(
            f"restored {report.files} entries, {_human(report.bytes)} from session "
            f"{report.session} into {to} in {report.elapsed:.1f} s"
        )
    for line in report.damaged:
        click.echo(f"eventbak: error: {line}", err=True)
    if report.damaged:
        what = "1 archive" if len(report.damaged) == 1 else f"{len(report.damaged)} archives"
        raise EventbakError(f"{what} could not be restored (its files are left out)")


# -- inspect / status / replay ----------------------------------------------


@main.command()
@click.option(
    "--vault",
    required=True,
    help="The vault to recover from (URL, with its options as for backup).",
)
@click.option(
    "--identity",
    "-i",
    type=click.Path(path_type=Path, dir_okay=False),
    help="age identity file, if the vault's catalogs are encrypted; default: "
    "[encryption] identity_file (or its passphrase_command).",
)
@click.option(
    "--tier",
    type=click.Choice(["Standard", "Bulk", "Expedited"]),
    default="Standard",
    show_default=True,
    help="Glacier vault: how fast the catalog archives are retrieved.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Glacier vault: how often to check on the inventory and retrieval jobs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def recover(
    c: Ctx, vault: str, identity: Path | None, tier: str, poll: float, as_json: bool
) -> None:
    """Rebuild the state dir from a vault alone (after losing this machine):
    sessions, archives and manifests, read from the vault's catalog objects
    (a hot class: nothing is thawed; a Glacier vault needs an inventory job
    and a retrieval job per catalog, hours on AWS). Then `restore` works as
    before."""
    from eventbak.recover import Waiting
    from eventbak.recover import recover as do_recover
    from eventbak.restore import parse_tier

    check_vault_url(vault)
    identities, warning = identities_for(c.config.encryption, identity)
    if warning:
        click.echo(f"eventbak: warning: {warning}", err=True)
    v = open_vault(vault)
    try:
        command = c.config.encryption.passphrase_command
        if identities is None and command:
            identities = recover_passphrase_keys(c.state_dir, command, v)
        report = do_recover(
            c.state_dir,
            v,
            identities,
            say=lambda line: click.echo(f"eventbak: {line}", err=True),
            waiting=Waiting(parse_tier(tier), poll),
        )
    finally:
        v.close()
    for w in report.warnings:
        click.echo(f"eventbak: warning: {w}", err=True)
    for why in report.skipped:
        click.echo(f"eventbak: left out: {why}", err=True)
    if as_json:
        click.echo(json.dumps(report.__dict__, indent=2))
    else:
        latest = report.sessions[-1]
        click.echo(
            f"recovered {len(report.sessions)} sessions, {report.archives} archives, "
            f"{report.entries} entries from {report.vault} into {c.state_dir}; "
            f"latest session {latest}"
            + (f"; {len(report.skipped)} catalogs left out" if report.skipped else "")
        )
    if report.skipped:
        sys.exit(EXIT_PARTIAL)


def _read_state(c: Ctx) -> tuple[State, Any]:
    if not log_path(c.state_dir).exists():
        raise UsageError(f"no event log in {c.state_dir} (nothing backed up yet?)")
    try:
        return read_state(c.state_dir, from_checkpoint=True)
    except IllegalTransition as exc:
        raise EventbakError(f"event log {log_path(c.state_dir)}: {exc}") from None


@main.command()
@click.option("--vault", help="Only archives of this vault (URL; its options do not matter).")
@click.option(
    "--from-vault",
    is_flag=True,
    help="Ask a glacier:// vault itself: start an inventory job (recorded in the log), or "
    "on a later call read it and report archives missing on either side.",
)
@click.option("--wait", is_flag=True, help="With --from-vault: wait for the inventory job.")
@click.option(
    "--poll",
    type=click.FloatRange(min=0.1, max=3600),
    default=60.0,
    show_default=True,
    help="With --from-vault --wait: seconds between questions to the vault.",
)
@click.option(
    "--members",
    "show_members",
    is_flag=True,
    help="List each archive's entries and how each file's data is stored (zstd or stored).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def inspect(
    c: Ctx,
    vault: str | None,
    from_vault: bool,
    wait: bool,
    poll: float,
    show_members: bool,
    as_json: bool,
) -> None:
    """List archives per vault, from the log (or, --from-vault, from a Glacier inventory).
    --members lists each archive's entries, with the compression decision per file."""
    if from_vault:
        _inspect_from_vault(c, vault, wait, poll, as_json)
        return
    state, _ = _read_state(c)
    want = vault_ref(vault) if vault else None
    by_vault: dict[str, list[dict[str, Any]]] = {}
    for a in state.archives.values():
        ref = a.vault or state.sessions[a.session].vault
        if want and vault_ref(ref) != want:
            continue
        by_vault.setdefault(ref, []).append(
            {
                "id": a.id,
                "session": a.session,
                "size": a.size,
                "members": a.count,
                "sha256": a.sha256,
                "state": a.state,
                "time": a.uploaded_at or a.sealed_at or a.started_at,
                "key": a.key,
                "storage_class": a.storage_class,
                "layers": a.layers,
            }
        )
        if show_members:
            by_vault[ref][-1]["entries"] = [
                {
                    "path": ev.show_path(m.path),
                    "kind": m.kind,
                    "size": m.size,
                    "offset": m.offset,
                    "length": m.length,
                    "compression": _decision(m),
                }
                for m in members(c.state_dir, a)
            ]
    if as_json:
        click.echo(json.dumps(by_vault, indent=2))
        return
    if not by_vault:
        click.echo("no archives" + (f" in {want}" if want else ""))
    for ref, rows in by_vault.items():
        click.echo(f"vault {ref}: {len(rows)} archives, {_human(sum(r['size'] for r in rows))}")
        for r in rows:
            cls = f"  {r['storage_class']}" if r["storage_class"] else ""
            layers = "+".join(["tar", *r["layers"]])
            click.echo(
                f"  {r['id']}  {r['state']:<9} {_human(r['size']):>10} {r['members']:>7} members"
                f"  {layers}  sha256:{r['sha256'][:16]}  {_when(r['time'])}{cls}"
            )
            for e in r.get("entries", ()):
                part = f" [{e['offset']}+{e['length']}]" if e["length"] != e["size"] else ""
                click.echo(
                    f"      {e['kind']:<8} {e['compression']:<6} {_human(e['size']):>10}"
                    f"  {e['path']}{part}"
                )


def _decision(m: ev.Member) -> str:
    """How a member's data was stored: `zstd`, `stored`, or `-` (no data)."""
    if m.kind != "file":
        return "-"
    if m.ref:
        return f"reused: {m.ref}"  # the same content, stored before (dedup)
    return "zstd" if m.zstd else "stored"


def _inspect_from_vault(c: Ctx, vault: str | None, wait: bool, poll: float, as_json: bool) -> None:
    from eventbak import inventory
    from eventbak.restore import VaultResolver

    if not log_path(c.state_dir).exists():
        raise UsageError(f"no event log in {c.state_dir} (nothing backed up yet?)")
    sd = StateDir.open(c.state_dir)  # the job goes into the log
    try:
        if vault:
            refs = [vault_ref(vault)]
        else:
            refs = sorted({s.vault for s in sd.state.sessions.values()
                           if s.vault.startswith("glacier://")})  # fmt: skip
            if not refs:
                raise UsageError("the log knows no glacier:// vault: say which with --vault URL")
            if len(refs) > 1:
                raise UsageError(
                    f"the log knows {len(refs)} Glacier vaults ({', '.join(refs)}): "
                    "say which with --vault URL"
                )
        configured = [(v.url, v.options()) for v in c.config.vaults.values()]

        def waiting(r: inventory.InventoryReport) -> None:
            if not as_json:
                click.echo(
                    f"inventory job {r.job} started {_when(r.requested_at)} is still running; "
                    f"asking again in {poll:g} s",
                    err=True,
                )

        with VaultResolver(sd.state, vault, configured) as vaults:
            report = inventory.check(sd, vaults(refs[0]), wait=wait, poll=poll, on_wait=waiting)
    finally:
        sd.close()
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
        return
    if report.status != "received":
        verb = "started" if report.status == "started" else "is still running (started"
        tail = "" if report.status == "started" else f" {_when(report.requested_at)})"
        click.echo(
            f"vault {report.vault}: inventory job {report.job} {verb}{tail}; Glacier takes hours: "
            "run `eventbak inspect --from-vault` again later, or add --wait"
        )
        return
    click.echo(
        f"vault {report.vault}: inventory {report.job} lists {report.archives} archives; "
        f"{len(report.missing)} in the log are missing from it, {len(report.unknown)} in it "
        "are not in the log"
    )
    for m in report.missing:
        click.echo(
            f"  missing  {m.archive}  {m.key}  {_human(m.size)}  uploaded {_when(m.uploaded_at)}"
        )
    for u in report.unknown:
        whose = "ours, not recorded (a duplicate)" if u.ours else "not of this state dir"
        click.echo(f"  unknown  {u.key}  {_human(u.size)}  {whose}")


def _session_dict(s: Any) -> dict[str, Any]:
    return {
        "session": s.id,
        "dataset": s.dataset,
        "state": s.state,
        "vault": s.vault,
        "opened": s.opened_at,
        "updated": s.updated_at,
        "files": s.files,
        "bytes": s.bytes,
        "archives": len(s.archives),
        "archives_uploaded": s.archives_uploaded,
        "bytes_uploaded": s.bytes_uploaded,
        "skipped": len(s.skipped),
        "changed": len(s.changed),
        "interruptions": s.interruptions,
        "pauses": s.pauses,
        "crashes": s.crashes,
        "error": s.error,
        "base": s.base,
        "point_in_time": _point_in_time(s),
    }


def _point_in_time(s: SessionState) -> dict[str, int] | None:
    """A completed session's whole point in time (its manifest's totals)."""
    c = s.catalog
    if c is None:
        return None
    return {"entries": c.entries, "files": c.files, "bytes": c.bytes}


@main.command()
@click.option("--dataset", help="Only sessions of this dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of sessions.")
@click.pass_obj
def sessions(c: Ctx, dataset: str | None, as_json: bool) -> None:
    """List the sessions, oldest first: each completed one is a point in time
    to restore (`restore --session ID`), with its files and bytes and what it
    stored new."""
    state, _ = _read_state(c)
    chosen = [s for s in state.sessions.values() if dataset is None or s.dataset == dataset]
    if as_json:
        click.echo(json.dumps([_session_dict(s) for s in chosen], indent=2))
        return
    if not chosen:
        click.echo("no sessions" + (f" of dataset {dataset}" if dataset else ""))
        return
    for s in chosen:
        pit = _point_in_time(s)
        whole = f"{pit['files']} files, {_human(pit['bytes'])}" if pit else "-"
        kind = f"since {s.base}" if s.base else "full"
        click.echo(
            f"{s.id}  {s.dataset}  {s.state:<9}  {_when(s.opened_at)}  {whole}; "
            f"new {s.files} files, {_human(s.bytes)} ({_human(s.bytes_uploaded)} stored)  "
            f"[{kind}]"
        )


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--prometheus",
    is_flag=True,
    help="Print metrics in Prometheus' text format (node_exporter's textfile collector).",
)
@click.pass_obj
def status(c: Ctx, as_json: bool, prometheus: bool) -> None:
    """The current or last session: its state and progress."""
    state, _ = _read_state(c)
    if prometheus:
        from datetime import UTC, datetime

        from eventbak.daemon import metrics, schedule

        windows = schedule.parse_windows(c.config.schedule.windows)
        tz = schedule.parse_timezone(c.config.schedule.timezone)
        now = datetime.now(UTC)
        reg = metrics.registry(state, now, None if windows.always else windows, tz)
        click.echo(metrics.text(reg).decode(), nl=False)
        return
    unfinished = state.unfinished_sessions()
    s = unfinished[-1] if unfinished else state.last_session
    if s is None:
        raise EventbakError("no session in the event log yet")
    d = _session_dict(s)
    d.update(_progress_of(state, s))
    holder = lock_holder(c.state_dir)
    decisions = {
        name: {"action": e.action, "until": e.until or None, "why": e.why, "at": e.at}
        for name, e in state.decisions.items()
    }
    if as_json:
        click.echo(json.dumps({**d, "running_pid": holder, "daemon": decisions}, indent=2))
        return
    if holder is not None:
        click.echo(f"eventbak process running: pid {holder} (a backup or the daemon)")
    for name, e in state.decisions.items():
        until = f" until {_when(e.until)}" if e.until else ""
        click.echo(f"daemon, dataset {name}: {e.action}{until} ({e.why})")
    click.echo(f"session {s.id} ({s.dataset}): {s.state}")
    click.echo(f"  vault:       {s.vault}")
    click.echo(f"  opened:      {_when(s.opened_at)}   last event: {_when(s.updated_at)}")
    click.echo(f"  stored:      {s.files} files, {_human(s.bytes)}")
    kept = [a for a in state.archives_of(s.id) if a.state != "discarded"]
    click.echo(
        f"  archives:    {s.archives_uploaded} uploaded of {len(kept)} "
        f"({_human(s.bytes_uploaded)}; {len(s.archives) - len(kept)} discarded)"
    )
    click.echo(f"  skipped:     {len(s.skipped)}   changed: {len(s.changed)}")
    why = ", ".join(s.pauses + ["crash"] * s.crashes) or "none"
    click.echo(f"  interrupted: {s.interruptions} times ({why})")
    if s.error:
        click.echo(f"  error:       {s.error}")
    p = d
    if p["upload_rate_mb_s"] is not None:
        click.echo(f"  upload rate: {p['upload_rate_mb_s']} MB/s over the session")
    if p["bytes_expected"] is not None and s.unfinished:
        click.echo(
            f"  remaining:   about {_human(p['bytes_remaining'])} (the last session of "
            f"{s.dataset} stored {_human(p['bytes_expected'])})"
        )
    last = p["last_completed"]
    if last is not None:
        age = time.time() - last["completed_at"]
        click.echo(
            f"  last completed session of {s.dataset}: {last['session']}, "
            f"{age / 3600:.1f} h ago"
        )


def _progress_of(state: State, s: SessionState) -> dict[str, Any]:
    """What status adds to a session: the dataset's last completed session
    (and its age), the bytes the session may still store (estimated from what
    the last completed session stored), its upload rate so far."""
    done = [x for x in state.sessions.values() if x.dataset == s.dataset and x.state == "completed"]
    last = done[-1] if done else None
    before = [x for x in done if x.id != s.id]
    elapsed = s.updated_at - s.opened_at
    rate = round(s.bytes_uploaded / elapsed / 1e6, 2) if elapsed > 0 and s.bytes_uploaded else None
    expected = before[-1].bytes if before else None
    return {
        "last_completed": None if last is None else {
            "session": last.id, "completed_at": last.updated_at,
        },
        "bytes_expected": expected,
        "bytes_remaining": None if expected is None else max(0, expected - s.bytes),
        "upload_rate_mb_s": rate,
    }  # fmt: skip


def _event_line(seq: int, offset: int, e: ev.Event | ev.HeadEvent) -> str:
    d = ev.to_jsonable(e)
    assert isinstance(d, dict)
    d.pop("t", None)
    at = d.pop("at", 0.0)
    parts = []
    for k, v in d.items():
        if k == "members":
            parts.append(f"members={len(v)}")
        elif k == "last" and isinstance(v, dict):
            parts.append(f"last={v['path']}")
        else:
            parts.append(f"{k}={v}")
    return f"{seq:>7} @{offset:<10} {_when(at)} {ev.event_name(e)} " + " ".join(parts)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one per event.")
@click.option("--verify", is_flag=True, help="Check framing, checksums and transitions.")
@click.option("--until", type=click.IntRange(min=0), help="Stop after event SEQ.")
@click.option("--machines", is_flag=True, help="Print the lifecycle tables and exit.")
@click.option("--members", is_flag=True, help="Include every archive's member list (catalog).")
@click.pass_obj
def replay(
    c: Ctx, as_json: bool, verify: bool, until: int | None, machines: bool, members: bool
) -> None:
    """Print the events of the log and the state they fold to."""
    if machines:
        click.echo(describe_machines())
        return
    path = log_path(c.state_dir)
    if not path.exists():
        raise UsageError(f"no event log in {c.state_dir} (nothing backed up yet?)")
    state = State()
    count, torn, size = 0, None, path.stat().st_size
    try:  # one record at a time: a long log is never held decoded in memory
        for rec in iter_log(path, until, full=members or verify):  # verify reads members too
            if isinstance(rec, TornTail):
                torn = rec
                continue
            count += 1
            try:
                apply(state, rec.event, rec.offset)
            except IllegalTransition as exc:
                if verify:
                    _verdict(as_json, False, rec.offset, f"event {rec.seq}: {exc}")
                raise EventbakError(
                    f"event log {path}: event {rec.seq} at offset {rec.offset}: {exc}"
                ) from None
            shown = rec.event
            if isinstance(shown, ev.ArchiveSealed) and not members:
                shown = head_of(shown)
            if as_json:
                d = ev.to_jsonable(shown)
                assert isinstance(d, dict)
                click.echo(json.dumps({"seq": rec.seq, "offset": rec.offset, **d}))
            elif isinstance(shown, ev.ArchiveSealed | ev.MembersListed):
                # --members: one line per member (a piece listed early, or the seal's)
                head = head_of(shown) if isinstance(shown, ev.ArchiveSealed) else shown
                click.echo(_event_line(rec.seq, rec.offset, head))
                for m in shown.members:
                    where = f" [{m.offset}+{m.length}]" if m.segmented else ""
                    target = f" -> {ev.show_path(m.target)}" if m.target else ""
                    reused = f" (reused: {m.ref})" if m.ref else ""
                    click.echo(
                        f"{'':>20}{m.kind:<8} {m.size:>12} {oct(m.mode)[2:]:>5} "
                        f"{ev.show_path(m.path)}{where}{target}{reused}"
                    )
            else:
                click.echo(_event_line(rec.seq, rec.offset, shown))
    except LogCorrupt as exc:
        if verify:
            _verdict(as_json, False, exc.offset, exc.detail)
        raise
    summary: dict[str, Any] = {
        "events": count,
        "bytes": size,
        "sessions": {s.id: s.state for s in state.sessions.values()},
        "archives": _count_states(state),
        "torn_tail": None if torn is None else torn.__dict__,
    }
    if as_json:
        click.echo(json.dumps({"state": summary}))
    else:
        click.echo(f"-- {count} events, {size} bytes")
        for sid, st in summary["sessions"].items():
            click.echo(f"   session {sid}: {st}")
        click.echo(
            "   archives: "
            + (", ".join(f"{n} {k}" for k, n in summary["archives"].items()) or "none")
        )
    if torn is not None:
        msg = f"torn final record at offset {torn.offset} ({torn.dropped} bytes: {torn.reason})"
        if verify:
            _verdict(as_json, False, torn.offset, msg)
            sys.exit(1)
        click.echo(f"eventbak: warning: {msg}; it is cut off at the next backup", err=True)
    elif verify:
        _verdict(as_json, True, None, f"{count} events")


def _verdict(as_json: bool, ok: bool, offset: int | None, detail: str) -> None:
    if as_json:
        click.echo(
            json.dumps({"verify": "ok" if ok else "failed", "offset": offset, "detail": detail})
        )
    elif ok:
        click.echo(f"verify: ok ({detail})")
    else:
        click.echo(f"verify: FAILED at offset {offset}: {detail}")


def _count_states(state: State) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in state.archives.values():
        counts[a.state] = counts.get(a.state, 0) + 1
    return counts


# -- keys ---------------------------------------------------------------------


@main.group()
def key() -> None:
    """age keys for encrypted archives."""


@key.command("generate")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the identity to this new file (0600) instead of standard output.",
)
def key_generate(output: Path | None) -> None:
    """Make a new age identity (secret key) and print its recipient (public key).

    Give the recipient to backups ([encryption] recipients or --recipient); keep
    the identity OFF the backup host (a password manager, a safe, another
    machine): only a restore needs it, and without it nothing can be restored."""
    text, recipient = write_identity(output)
    if output is None:
        click.echo(text, nl=False)
        click.echo(f"Public key: {recipient}", err=True)
    else:
        click.echo(recipient)
