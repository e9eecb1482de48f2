"""Configuration: the TOML file decoded into msgspec Structs, and its defaults.

The Structs below are the reference for every key (docs/configuration.md
mirrors them). A wrong key, type or value is a `ConfigError` naming the key
and the file; the CLI prints it on one line and exits 2.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from eventbak.errors import ConfigError, UsageError

DEFAULT_ARCHIVE_SIZE = 128 * 1024 * 1024
#: Below this an archive cannot hold a long path's headers and still make progress.
MIN_ARCHIVE_SIZE = 64 * 1024
MAX_ARCHIVE_SIZE = 4 * 1024**4
DEFAULT_COMPRESSION = "auto"
DEFAULT_ZSTD_LEVEL = 3


class VaultConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A `[vaults.NAME]` table. The option keys are the URL's query parameters
    (vaults/url.py); a key given in both places must agree."""

    url: str
    archive_size: str | int = "128MiB"
    storage_class: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    part_size: str | int | None = None
    concurrency: int | None = None

    def options(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in VAULT_OPTION_KEYS if getattr(self, k) is not None}


VAULT_OPTION_KEYS = ("storage_class", "endpoint_url", "region", "part_size", "concurrency")


class DatasetConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    paths: list[str]
    exclude: list[str] = []
    vault: str | None = None
    compression: str = DEFAULT_COMPRESSION
    #: Files matching these (gitignore patterns, like `exclude`) are always
    #: compressed, or never; `always_compress` wins when both match.
    always_compress: list[str] = []
    never_compress: list[str] = []
    #: The change rule of incremental sessions leaves out inode numbers / ctimes
    #: (for file systems that do not keep them stable across mounts).
    ignore_inode: bool = False
    ignore_ctime: bool = False
    #: Commands run before and after each of the daemon's sessions of this
    #: dataset (a snapshot: ZFS, btrfs, LVM); split like a shell would, not
    #: run by one. A failing `before` skips the session; `after` always runs.
    before: list[str] = []
    after: list[str] = []


class ScheduleConfig(msgspec.Struct, forbid_unknown_fields=True):
    """`[schedule]`: when `eventbak daemon` works (daemon/schedule.py) and how
    fast it uploads (daemon/bandwidth.py). `eventbak backup` ignores it."""

    #: "HH:MM[:SS]-HH:MM[:SS]" windows (crossing midnight allowed), or "always"
    windows: str | list[str] = "always"
    #: an IANA name (Europe/Berlin); unset: the machine's local time
    timezone: str | None = None
    #: how often a new session starts once the previous one completed
    every: str = "daily"
    #: "10MiB/s", "off", or a timetable ("08:00,512KiB/s 23:00,off")
    upload_limit: str = "off"
    #: a session that fails this many times in a row at the same point is failed
    max_failures: int = 3
    #: a Prometheus text file the daemon rewrites (node_exporter's textfile collector)
    metrics_file: str | None = None


class EncryptionConfig(msgspec.Struct, forbid_unknown_fields=True):
    """`[encryption]`: archives are encrypted with age to every recipient
    (public keys, `age1...`); restoring needs one identity (secret key)."""

    recipients: list[str] = []
    recipients_file: str | None = None
    identity_file: str | None = None
    #: A shell command that prints the passphrase (`pass show eventbak`):
    #: archives are encrypted to a key that the passphrase protects (keys.py).
    passphrase_command: str | None = None


class Config(msgspec.Struct, forbid_unknown_fields=True):
    state_dir: str | None = None
    vaults: dict[str, VaultConfig] = {}
    datasets: list[DatasetConfig] = []
    encryption: EncryptionConfig = msgspec.field(default_factory=EncryptionConfig)
    schedule: ScheduleConfig = msgspec.field(default_factory=ScheduleConfig)


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB|K|M|G|T)?\s*$")
_UNITS = {None: 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_UNITS.update({"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4})


def parse_size(value: str | int) -> int:
    """`123`, `64KiB`, `128MiB`, `1GiB` -> bytes. ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size (examples: 123, 64KiB, 128MiB, 1GiB)")
        n = int(m.group(1)) * _UNITS[m.group(2)]
    return n


def parse_archive_size(value: str | int) -> int:
    n = parse_size(value)
    if n < MIN_ARCHIVE_SIZE:
        raise ValueError(f"{value!r} is below the minimum archive size of 64KiB")
    if n > MAX_ARCHIVE_SIZE:
        raise ValueError(f"{value!r} is above the maximum archive size of 4TiB")
    return n


@dataclass(frozen=True)
class Compression:
    """`auto` (zstd, with already-compressed media stored at a fast level),
    `none` (plain tar) or `zstd[:LEVEL]` (every member at LEVEL)."""

    mode: str  # "auto" | "none" | "zstd"
    level: int = DEFAULT_ZSTD_LEVEL

    def __str__(self) -> str:
        if self.mode == "zstd":
            return f"zstd:{self.level}"
        return self.mode

    @property
    def suffix(self) -> str:
        return ".tar" if self.mode == "none" else ".tar.zst"


def parse_compression(value: str) -> Compression:
    v = value.strip().lower()
    if v in ("auto", "none"):
        return Compression(v)
    if v == "zstd":
        return Compression("zstd")
    if v.startswith("zstd:"):
        try:
            level = int(v[5:])
        except ValueError:
            level = 0
        if 1 <= level <= 22:
            return Compression("zstd", level)
        raise ValueError(f"{value!r}: zstd level must be 1 to 22")
    raise ValueError(f"{value!r} is not one of auto, none, zstd[:LEVEL]")


def _dotted(msgspec_path: str) -> str:
    # "$.vaults.offsite.url" / "$.datasets[0].name" -> "vaults.offsite.url" / "datasets[0].name"
    return msgspec_path.removeprefix("$").removeprefix(".") or "(top level)"


def load_config(path: Path) -> Config:
    """Read and validate a config file; every problem is a one-line ConfigError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    vaults = data.get("vaults")
    if isinstance(vaults, dict):  # msgspec does not name dict keys in its paths
        for name, table in vaults.items():
            try:
                msgspec.convert(table, VaultConfig)
            except msgspec.ValidationError as exc:
                msg = str(exc)
                where = f"$.vaults.{name}"
                m = re.match(r"^(.*?) - at `\$([^`]*)`$", msg)
                msg = f"{m.group(1)} - at `{where}{m.group(2)}`" if m else f"{msg} - at `{where}`"
                raise ConfigError(f"config file {path}: {_explain(msg)}") from None
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config file {path}: {_explain(str(exc))}") from None
    _validate(cfg, path)
    return cfg


def _explain(msg: str) -> str:
    # msgspec says e.g. "Object contains unknown field `x` - at `$.vaults.a`"
    # or "Expected `str`, got `int` - at `$.y`"
    m = re.match(r"^(.*?)(?: - at `([^`]*)`)?$", msg)
    if not m:
        return msg
    what, where = m.group(1), m.group(2) or "$"
    unknown = re.match(r"Object contains unknown field `([^`]*)`", what)
    if unknown:
        key = unknown.group(1)
        base = _dotted(where)
        full = key if base == "(top level)" else f"{base}.{key}"
        return f"unknown key {full}"
    missing = re.match(r"Object missing required field `([^`]*)`", what)
    if missing:
        base = _dotted(where)
        key = missing.group(1)
        full = key if base == "(top level)" else f"{base}.{key}"
        return f"missing required key {full}"
    return f"key {_dotted(where)}: {what[0].lower()}{what[1:]}"


def _validate(cfg: Config, path: Path) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"config file {path}: key {key}: {why}")

    for name, vault in cfg.vaults.items():
        try:
            parse_archive_size(vault.archive_size)
        except ValueError as exc:
            fail(f"vaults.{name}.archive_size", str(exc))
        try:
            check_vault_url(vault.url, vault.options())
        except UsageError as exc:
            fail(f"vaults.{name}", str(exc))
    seen: set[str] = set()
    for i, ds in enumerate(cfg.datasets):
        where = f"datasets[{i}]"
        if not ds.name:
            fail(f"{where}.name", "must not be empty")
        if ds.name in seen:
            fail(f"{where}.name", f"dataset {ds.name!r} is defined twice")
        seen.add(ds.name)
        if not ds.paths:
            fail(f"{where}.paths", "needs at least one path")
        if ds.vault is not None and ds.vault not in cfg.vaults:
            fail(f"{where}.vault", f"no vault named {ds.vault!r} under [vaults]")
        if ds.vault is None and len(cfg.vaults) > 1:
            fail(f"{where}.vault", f"needed: [vaults] has {len(cfg.vaults)} vaults, say which")
        try:
            parse_compression(ds.compression)
        except ValueError as exc:
            fail(f"{where}.compression", str(exc))
        for key in ("always_compress", "never_compress"):
            try:
                check_patterns(getattr(ds, key))
            except ValueError as exc:
                fail(f"{where}.{key}", str(exc))
        for key in ("before", "after"):
            for j, command in enumerate(getattr(ds, key)):
                why = check_hook(command)
                if why:
                    fail(f"{where}.{key}[{j}]", why)
    _validate_schedule(cfg.schedule, fail)
    for i, r in enumerate(cfg.encryption.recipients):
        try:
            check_recipient(r)
        except ValueError as exc:
            fail(f"encryption.recipients[{i}]", str(exc))
    if cfg.state_dir is not None and not cfg.state_dir:
        fail("state_dir", "must not be empty")


def _validate_schedule(sc: ScheduleConfig, fail: Callable[[str, str], None]) -> None:
    from eventbak.daemon import bandwidth, schedule

    limit = "schedule.upload_limit"
    checks: list[tuple[str, Callable[[], object]]] = [
        ("schedule.windows", lambda: schedule.parse_windows(sc.windows)),
        ("schedule.timezone", lambda: schedule.parse_timezone(sc.timezone)),
        ("schedule.every", lambda: schedule.parse_every(sc.every)),
        ("schedule.upload_limit", lambda: bandwidth.parse_limit(sc.upload_limit, key=limit)),
    ]
    for key, parse in checks:
        try:
            parse()
        except ValueError as exc:
            # ScheduleError, LimitError: "KEY: why", KEY maybe more precise
            # than ours (schedule.windows[1])
            named, _, why = str(exc).partition(": ")
            if named.startswith(key) and why:
                fail(named, why)
            fail(key, str(exc))
    if sc.max_failures < 1:
        fail("schedule.max_failures", "must be at least 1")
    if sc.metrics_file is not None and not os.path.isabs(sc.metrics_file):
        fail("schedule.metrics_file", "must be an absolute path")


def check_hook(command: str) -> str:
    """Why `command` cannot be a hook ("" if it can): it must split like a
    shell line and name a program that exists (a path, or one on PATH)."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return f"{command!r} does not split like a shell line ({exc})"
    if not words:
        return "an empty command"
    program = words[0]
    found = os.access(program, os.X_OK) if "/" in program else shutil.which(program)
    if not found:
        return f"{command!r}: no program {program!r} (not found, or not executable)"
    return ""


def check_patterns(patterns: list[str]) -> None:
    from eventbak.archive.policy import check_patterns as check

    check(patterns)


def check_recipient(text: str) -> str:
    from eventbak.archive.age import check_recipient as check

    return check(text)


def check_vault_url(url: str, options: dict[str, object] | None = None) -> None:
    """Only syntax here (UsageError if bad); vaults/ opens and checks the target.
    A date tag is checked filled in (vaults/url.py `expand_date`)."""
    from datetime import datetime

    from eventbak.vaults.url import expand_date, parse_vault

    parse_vault(expand_date(url, datetime(2026, 1, 31)), options)


def xdg_dir(env: str, fallback: str) -> Path:
    base = os.environ.get(env)
    if base and os.path.isabs(base):
        return Path(base) / "eventbak"
    return Path.home() / fallback / "eventbak"


def default_state_dir() -> Path:
    return xdg_dir("XDG_STATE_HOME", ".local/state")


def default_vault_url() -> str:
    return "file://" + str(xdg_dir("XDG_DATA_HOME", ".local/share") / "vault")
