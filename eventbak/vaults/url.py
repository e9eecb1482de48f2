"""Vault URLs and options: `file:///dir`, `s3://BUCKET/PREFIX?...`, `glacier://VAULT?...`.

`parse_vault(url, table)` checks the syntax (no network) and returns a
`VaultSpec`: the kind, the location (what identifies the vault: `ref`) and
the options. Options come as URL query parameters or as the same keys in the
vault's config table; a key given both ways must agree. Every problem is one
`UsageError` line naming the URL and the option.

    s3://bkp/host1?storage_class=DEEP_ARCHIVE&endpoint_url=http://127.0.0.1:5000&region=us-east-1
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from eventbak.errors import UsageError

VaultKind = Literal["file", "s3", "glacier"]

STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")
#: Classes whose objects must be thawed (RestoreObject) before they can be read.
FROZEN_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MIB
#: S3's limits for every part but the last.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64

S3_OPTIONS = ("storage_class", "endpoint_url", "region", "part_size", "concurrency")
GLACIER_OPTIONS = ("endpoint_url", "region")

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_GLACIER_VAULT = re.compile(r"[A-Za-z0-9_.-]{1,255}\Z")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,30}[a-z0-9]\Z")
_PREFIX_PART = re.compile(r"[A-Za-z0-9!_.*'()-]+\Z")


@dataclass(frozen=True)
class VaultSpec:
    kind: VaultKind
    url: str  # as given
    path: str = ""  # file: absolute directory
    bucket: str = ""  # s3
    prefix: str = ""  # s3: without leading or trailing "/"
    name: str = ""  # glacier vault name
    storage_class: str = "STANDARD"
    endpoint_url: str | None = None
    region: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    options: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def ref(self) -> str:
        """The vault's identity in the log: kind and location, no options."""
        if self.kind == "file":
            return "file://" + self.path
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"glacier://{self.name}"


def _bad(url: str, why: str) -> UsageError:
    return UsageError(f"vault URL {url!r}: {why}")


def _size(url: str, key: str, value: str) -> int:
    from eventbak.config import parse_size  # config imports this module

    try:
        return parse_size(value)
    except ValueError as exc:
        raise _bad(url, f"{key}: {exc}") from None


def _options(
    url: str, query: str, table: Mapping[str, object], allowed: tuple[str, ...]
) -> dict[str, str]:
    opts: dict[str, str] = {}
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        why = f"cannot read the options {query!r} (expected key=value&key=value)"
        raise _bad(url, why) from None
    for key, value in pairs:
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise _bad(url, f"unknown option {key!r} (known: {known})")
        if key in opts:
            raise _bad(url, f"option {key} is given twice")
        opts[key] = value
    for key, raw in table.items():
        if raw is None:
            continue
        if key not in allowed:
            raise _bad(url, f"option {key} does not apply to this kind of vault")
        value = str(raw)
        if key in opts and opts[key] != value:
            raise _bad(url, f"{key} is {opts[key]!r} in the URL but {value!r} in the config")
        opts[key] = value
    return opts


def parse_vault(url: str, table: Mapping[str, object] | None = None) -> VaultSpec:
    """The vault a URL (plus its config table's option keys) names; UsageError if
    it is malformed. No network access."""
    table = table or {}
    if not isinstance(url, str) or "://" not in url:
        raise _bad(str(url), "expected file:///dir, s3://bucket/prefix or glacier://vault")
    scheme, rest = url.split("://", 1)
    if scheme == "file":
        if not rest.startswith("/"):
            raise _bad(url, "a file URL needs an absolute path (file:///dir)")
        if "?" in rest or "#" in rest:
            raise _bad(url, "a file URL takes no options")
        _options(url, "", table, ())
        path = "/" + rest.strip("/") if rest.strip("/") else "/"
        return VaultSpec(kind="file", url=url, path=path)
    if scheme not in ("s3", "glacier"):
        use = "use file:///dir, s3://bucket/prefix or glacier://vault"
        raise _bad(url, f"unknown scheme {scheme!r} ({use})")
    split = urllib.parse.urlsplit(url)
    if split.fragment:
        raise _bad(url, "a vault URL has no #fragment")
    host = split.netloc
    if "@" in host:
        raise _bad(url, "credentials never go in the URL (use AWS_PROFILE, env or a role)")
    allowed = S3_OPTIONS if scheme == "s3" else GLACIER_OPTIONS
    opts = _options(url, split.query, table, allowed)
    endpoint = opts.get("endpoint_url") or None
    if endpoint is not None:
        ep = urllib.parse.urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise _bad(url, f"endpoint_url {endpoint!r} is not an http:// or https:// URL")
        if ep.username or ep.password:
            raise _bad(url, "endpoint_url must not hold credentials")
        try:
            ep.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise _bad(url, f"endpoint_url {endpoint!r} has a bad port") from None
    region = opts.get("region") or None
    if region is not None and not _REGION.match(region):
        raise _bad(url, f"region {region!r} is not a region name (like us-east-1)")
    if scheme == "glacier":
        name = host
        if split.path not in ("", "/"):
            raise _bad(url, "a Glacier URL names a vault only: glacier://VAULT")
        if not _GLACIER_VAULT.match(name):
            raise _bad(url, f"{name!r} is not a Glacier vault name (1-255 of A-Z a-z 0-9 _ - .)")
        return VaultSpec(
            kind="glacier", url=url, name=name, endpoint_url=endpoint, region=region,
            options=opts,
        )  # fmt: skip
    bucket = host
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise _bad(url, f"{bucket!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
    prefix = split.path.strip("/")
    if prefix:
        for part in prefix.split("/"):
            if part in (".", "..") or not _PREFIX_PART.match(part):
                why = f"prefix {prefix!r}: use letters, digits and !_.*'()- between slashes"
                raise _bad(url, why)
    storage_class = opts.get("storage_class", "STANDARD").upper()
    if storage_class not in STORAGE_CLASSES:
        known = ", ".join(STORAGE_CLASSES)
        raise _bad(url, f"unknown storage_class {opts['storage_class']!r} (one of {known})")
    part_size = DEFAULT_PART_SIZE
    if "part_size" in opts:
        part_size = _size(url, "part_size", opts["part_size"])
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise _bad(url, "part_size must be 5MiB to 5GiB (S3's limits)")
    concurrency = DEFAULT_CONCURRENCY
    if "concurrency" in opts:
        try:
            concurrency = int(opts["concurrency"])
        except ValueError:
            concurrency = 0
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise _bad(url, f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}")
    return VaultSpec(
        kind="s3", url=url, bucket=bucket, prefix=prefix, storage_class=storage_class,
        endpoint_url=endpoint, region=region, part_size=part_size, concurrency=concurrency,
        options=opts,
    )  # fmt: skip


#: `{date}` (YYYY-MM-DD) or `{date:FORMAT}` (strftime codes, `%Y-%m` for a
#: vault per month) in a vault URL: a session opened with it keeps the vault
#: it named that day for its whole life (resumed in it on later days).
_DATE_TAG = re.compile(r"\{date(?::([^{}]*))?\}")
_FORMAT = re.compile(r"^(?:%[YmdjUWGVuaAbBH]|[-_.A-Za-z0-9])+$")


def has_date_tag(url: str) -> bool:
    return _DATE_TAG.search(url) is not None


def expand_date(url: str, when: datetime) -> str:
    """`url` with its date tags filled in for `when` (UsageError for a format
    that is not a plain date: strftime codes and `-_.` letters digits)."""

    def fill(m: re.Match[str]) -> str:
        fmt = m.group(1) if m.group(1) is not None else "%Y-%m-%d"
        if not _FORMAT.match(fmt):
            raise _bad(url, f"{m.group(0)}: a date format of strftime codes and - _ . only")
        return when.strftime(fmt)

    return _DATE_TAG.sub(fill, url)
