"""The `s3-upload` case of bench/run.py: eventbak's S3 upload path against
boto3's own `upload_file` (s3transfer), both to a local SeaweedFS.

The harness (bench/run.py, `Bench.s3_case`) starts SeaweedFS (tests/servers.py),
makes the staged archives (random, incompressible bytes) and runs each side
as a child process of this file, so that its peak RSS is its own:

    python bench/s3upload.py eventbak --manifest M --endpoint URL --bucket B --prefix P --state S
    python bench/s3upload.py boto3 --manifest M --endpoint URL --bucket B --prefix P

`eventbak`: a real state dir (StateDir.open) in which a session has sealed the
archives (SessionOpened, ArchiveStarted, ArchiveSealed with the archive's
size and SHA-256; the staged file is a hard link to the manifest's file, so
the page cache holds it already), then `Transfers(sd, vault, session).run(
archive, Observed.fresh())` for each archive through `Transfers.run_all`, the
coordinator's uploader (two archives in transfer at once, parts sharing
`concurrency` slots), in one `trio.run`: CreateMultipartUpload, parts in
threads with a committed `PartUploaded` per part, CompleteMultipartUpload and
its HeadObject, `ArchiveUploaded`.

`boto3`: one client with the same botocore Config as S3Vault's (retries,
pool size, timeouts, path addressing, `request_checksum_calculation=
"when_required"`), then `client.upload_file(path, bucket, key, ExtraArgs=
{"ChecksumAlgorithm": "SHA256", "StorageClass": "STANDARD"}, Config=
TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
max_concurrency=concurrency, use_threads=True))` for each archive, one after
another. With `ChecksumAlgorithm` botocore hashes every part with SHA-256
itself and sends `x-amz-checksum-sha256`, which SeaweedFS verifies, as it
verifies eventbak's: both sides do the same hashing work (and over http,
SigV4 signs the payload, one more SHA-256 of each part, on both sides alike).

Timed, in the child: from the first request that sends archive bytes to the
last archive's completion (the interpreter's start, imports, the client and
a HeadBucket that opens the first connection, and the state dir set-up are
not). The child prints one JSON line: `seconds`, `bytes`, `keys`, and for
eventbak the per-archive times read back from the event log.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MIB = 1024 * 1024
#: The archive size of eventbak's default settings, and the case's total at scale 1.
ARCHIVE_SIZE = 128 * MIB
TOTAL_AT_SCALE_1 = 8 * ARCHIVE_SIZE
BUCKET = "bench"
_GEN_CHUNK = 16 * MIB
_READ_CHUNK = 8 * MIB


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class Staged:
    """One staged archive: its file, size, SHA-256 (hex) and, for the part
    size it was made for, the composite checksum S3 reports for it sent in
    parts: base64(sha256(d1 || d2 ...))-N."""

    path: Path
    size: int
    sha256: str
    composite: str

    def as_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "size": self.size, "sha256": self.sha256}


def sizes_for(scale: float, part_size: int) -> tuple[int, int]:
    """(archives, bytes each): 8 x 128 MiB at scale 1, count scaled above it;
    below, fewer or smaller archives, but never less than 2.5 parts, so that
    the multipart path is what is measured."""
    total = max(round(TOTAL_AT_SCALE_1 * scale), part_size * 5 // 2)
    if total >= 2 * ARCHIVE_SIZE:
        return round(total / ARCHIVE_SIZE), ARCHIVE_SIZE
    return 1, -(-total // MIB) * MIB


def make_archives(
    where: Path, count: int, size: int, part_size: int, seed: int
) -> tuple[list[Staged], float]:
    """`count` files of `size` random bytes in `where` (reused when the count,
    size and seed match a previous run's marker). Returns them and the seconds
    spent making them (0 when reused)."""
    marker = where / "archives.json"
    want = {"count": count, "size": size, "seed": seed, "part_size": part_size}
    try:
        have = json.loads(marker.read_text())
    except (OSError, ValueError):
        have = {}
    if have.get("params") == want and all(
        (where / a["name"]).is_file() and (where / a["name"]).stat().st_size == size
        for a in have.get("archives", [])
    ):
        return [
            Staged(where / a["name"], size, a["sha256"], a["composite"]) for a in have["archives"]
        ], 0.0
    t0 = time.perf_counter()
    marker.unlink(missing_ok=True)
    where.mkdir(parents=True, exist_ok=True)
    for old in where.glob("archive-*.bin"):
        old.unlink()
    rng = random.Random(seed)
    out: list[Staged] = []
    for k in range(count):
        path = where / f"archive-{k + 1:03d}.bin"
        whole = hashlib.sha256()
        digests: list[bytes] = []
        part = hashlib.sha256()
        in_part = 0
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = rng.randbytes(min(_GEN_CHUNK, left))
                f.write(chunk)
                whole.update(chunk)
                view = memoryview(chunk)
                while view:
                    take = min(len(view), part_size - in_part)
                    part.update(view[:take])
                    in_part += take
                    view = view[take:]
                    if in_part == part_size:
                        digests.append(part.digest())
                        part, in_part = hashlib.sha256(), 0
                left -= len(chunk)
        if in_part:
            digests.append(part.digest())
        composite = f"{_b64(hashlib.sha256(b''.join(digests)).digest())}-{len(digests)}"
        out.append(Staged(path, size, whole.hexdigest(), composite))
    marker.write_text(
        json.dumps(
            {
                "params": want,
                "archives": [
                    {"name": a.path.name, "sha256": a.sha256, "composite": a.composite} for a in out
                ],
            }
        )
    )
    return out, time.perf_counter() - t0


def write_manifest(path: Path, archives: Sequence[Staged]) -> None:
    path.write_text(json.dumps([a.as_json() for a in archives]))


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return data


def client_config(concurrency: int, endpoint_url: str | None) -> Any:
    """The botocore Config of eventbak's S3Vault (eventbak/vaults/s3.py) for
    `concurrency` parts in flight: the boto3 side uses the same."""
    from botocore.config import Config

    return Config(
        retries={"mode": "standard", "total_max_attempts": 8},
        max_pool_connections=concurrency + 4,
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
        s3={"addressing_style": "path"} if endpoint_url else None,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


# -- the parent's side: the server, checking what was stored ------------------


class Store:
    """A SeaweedFS for the bench (tests/servers.py), with one bucket."""

    def __init__(self, workdir: Path) -> None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from tests import servers

        self.workdir = workdir
        shutil.rmtree(workdir, ignore_errors=True)  # a fresh, empty store
        t0 = time.perf_counter()
        self.server = servers.start_seaweedfs(workdir)
        self.started_in = time.perf_counter() - t0
        self.endpoint_url = self.server.endpoint_url
        self.client = servers.s3_client(self.endpoint_url, attempts=3, timeout=120.0)
        self.client.create_bucket(Bucket=BUCKET)
        self.version = _weed_version()

    def warm_up(self, archive: Staged, part_size: int) -> float:
        """Upload one archive in parts (untimed), so that the bucket's first
        volume exists before the first timed run (SeaweedFS makes it on the
        first write, which would slow whichever side goes first)."""
        from boto3.s3.transfer import TransferConfig

        t0 = time.perf_counter()
        config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        self.client.upload_file(str(archive.path), BUCKET, "warm-up/archive", Config=config)
        return time.perf_counter() - t0

    @staticmethod
    def child_env(env: dict[str, str]) -> dict[str, str]:
        """`env` with the test credentials SeaweedFS takes (and no AWS config)."""
        from tests import servers

        out = dict(env)
        servers.use_test_credentials(out)
        return out

    def check(self, prefix: str, keys: Sequence[str], archives: Sequence[Staged]) -> str:
        """'' if every archive is stored whole under its key below `prefix`
        (size and the composite SHA-256 S3 reports), else what is wrong."""
        if len(keys) != len(archives):
            return f"{len(keys)} keys reported for {len(archives)} archives"
        for key, a in zip(keys, archives, strict=True):
            name = f"{prefix}/{key}"
            try:
                head = self.client.head_object(Bucket=BUCKET, Key=name, ChecksumMode="ENABLED")
            except Exception as exc:  # reported in the ok column
                return f"{name}: HeadObject failed: {exc}"
            size = int(head.get("ContentLength", -1))
            got = str(head.get("ChecksumSHA256") or "")
            if size != a.size:
                return f"{name}: {size} bytes stored, not {a.size}"
            if got != a.composite:
                return f"{name}: checksum {got or '(none)'}, expected {a.composite}"
        return ""

    def read_back(self, prefix: str, keys: Sequence[str], archives: Sequence[Staged]) -> str:
        """'' if every object reads back with the archive's SHA-256."""
        for key, a in zip(keys, archives, strict=True):
            name = f"{prefix}/{key}"
            h = hashlib.sha256()
            try:
                body = self.client.get_object(Bucket=BUCKET, Key=name)["Body"]
                while chunk := body.read(_READ_CHUNK):
                    h.update(chunk)
            except Exception as exc:  # reported in the ok column
                return f"{name}: GetObject failed: {exc}"
            if h.hexdigest() != a.sha256:
                return f"{name}: reads back as SHA-256 {h.hexdigest()}, not {a.sha256}"
        return ""

    def clear(self) -> None:
        """Delete every object and abort every multipart upload in the bucket."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": objs})
        uploads = self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        for u in uploads:
            self.client.abort_multipart_upload(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"])

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used so far."""
        pid = self.server.pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat[stat.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        try:
            self.client.close()
        finally:
            self.server.stop()


def _weed_version() -> str:
    import subprocess

    exe = Path(sys.executable).parent / "weed"
    try:
        p = subprocess.run(
            [str(exe) if exe.exists() else "weed", "version"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = p.stdout.decode(errors="replace").strip().splitlines()
    return lines[0].strip() if lines else ""


def child_argv(
    tool: str,
    manifest: Path,
    endpoint_url: str,
    prefix: str,
    part_size: int,
    concurrency: int,
    state: Path | None = None,
) -> list[str]:
    argv = [
        sys.executable, str(Path(__file__).resolve()), tool, "--manifest", str(manifest),
        "--endpoint", endpoint_url, "--bucket", BUCKET, "--prefix", prefix,
        "--part-size", str(part_size), "--concurrency", str(concurrency),
    ]  # fmt: skip
    if state is not None:
        argv += ["--state", str(state)]
    return argv


# -- the children ---------------------------------------------------------------


def run_eventbak(args: argparse.Namespace) -> dict[str, Any]:
    import trio

    from eventbak.core import events as ev
    from eventbak.core import plan
    from eventbak.pipeline.uploader import Transfers
    from eventbak.statedir import StateDir
    from eventbak.vaults.s3 import S3Vault
    from eventbak.vaults.url import parse_vault

    archives = _read_manifest(args.manifest)
    url = (
        f"s3://{args.bucket}/{args.prefix}?endpoint_url={args.endpoint}&region=us-east-1"
        f"&part_size={args.part_size // MIB}MiB&concurrency={args.concurrency}"
    )
    vault = S3Vault(parse_vault(url))
    assert vault.part_size == args.part_size and vault.concurrency == args.concurrency
    sd = StateDir.open(args.state)
    session = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-bench"
    at = time.time()
    sd.record(
        ev.SessionOpened(
            at=at, session=session, dataset="bench", vault=vault.ref, paths=[b"/bench"],
            archive_size=ARCHIVE_SIZE, compression="none", host="bench", version="bench",
            vault_url=url,
        )
    )  # fmt: skip
    aids: list[str] = []
    for k, a in enumerate(archives):
        aid = f"{session}-{k + 1:06d}"
        staged = f"{aid}.tar"
        os.link(a["path"], sd.staging / staged)  # same inode: already in the page cache
        sd.record(ev.ArchiveStarted(at=at, session=session, archive=aid, index=k + 1))
        member = ev.Member(
            path=f"/bench/{Path(a['path']).name}".encode(), kind="file", mode=0o644,
            mtime_ns=time.time_ns(), size=a["size"], length=a["size"],
        )  # fmt: skip
        sd.record(
            ev.ArchiveSealed.of(
                at=at, archive=aid, staged=staged, size=a["size"], raw_size=a["size"],
                sha256=a["sha256"], compression="none", members=[member],
            )
        )  # fmt: skip
        aids.append(aid)
    sd.commit()
    vault.prepare()  # HeadBucket: makes the client and opens its first connection
    transfers = Transfers(sd, vault, session)

    async def sealed() -> AsyncIterator[tuple[str, plan.Observed]]:
        for aid in aids:
            yield aid, plan.Observed.fresh()

    async def upload_all() -> None:
        await transfers.run_all(sealed())  # what the coordinator's uploader runs

    t0 = time.perf_counter()
    trio.run(upload_all)
    seconds = time.perf_counter() - t0
    vault.close()
    state = sd.state
    bad = [aid for aid in aids if state.archives[aid].state != "uploaded"]
    keys = [state.archives[aid].key for aid in aids]
    sd.close()
    if bad:
        raise SystemExit(f"not uploaded: {', '.join(bad)}")
    return {
        "seconds": seconds,
        "bytes": sum(a["size"] for a in archives),
        "keys": keys,
        "archives": _archive_times(args.state),
    }


def _archive_times(state: Path) -> list[dict[str, float]]:
    """Per archive, from the event log's timestamps: `parts` (UploadStarted to
    the last PartUploaded) and `complete` (from there to ArchiveUploaded:
    CompleteMultipartUpload and its HeadObject), and the `gap` before it
    (from the previous ArchiveUploaded to its UploadStarted)."""
    from eventbak.core import events as ev
    from eventbak.core.log import read_log

    out: list[dict[str, float]] = []
    started = last_part = uploaded = gap = 0.0
    for rec in read_log(state / "events.log").records:
        e = rec.event
        if isinstance(e, ev.UploadStarted):
            gap = e.at - uploaded if uploaded else 0.0
            started, last_part = e.at, e.at
        elif isinstance(e, ev.PartUploaded):
            last_part = e.at
        elif isinstance(e, ev.ArchiveUploaded):
            uploaded = e.at
            out.append(
                {
                    "gap": round(gap, 4),
                    "parts": round(last_part - started, 4),
                    "complete": round(e.at - last_part, 4),
                }
            )
    return out


def run_boto3(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    from boto3.s3.transfer import TransferConfig

    archives = _read_manifest(args.manifest)
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        config=client_config(args.concurrency, args.endpoint),
    )
    client.head_bucket(Bucket=args.bucket)  # opens the first connection, as vault.prepare()
    config = TransferConfig(
        multipart_threshold=args.part_size,
        multipart_chunksize=args.part_size,
        max_concurrency=args.concurrency,
        use_threads=True,
    )
    extra = {"ChecksumAlgorithm": "SHA256", "StorageClass": "STANDARD"}
    keys = [f"archives/{Path(a['path']).name}" for a in archives]
    t0 = time.perf_counter()
    for a, key in zip(archives, keys, strict=True):
        client.upload_file(
            a["path"], args.bucket, f"{args.prefix}/{key}", ExtraArgs=extra, Config=config
        )
    seconds = time.perf_counter() - t0
    client.close()
    return {"seconds": seconds, "bytes": sum(a["size"] for a in archives), "keys": keys}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tool", choices=("eventbak", "boto3"))
    ap.add_argument("--manifest", type=Path, required=True, help="JSON: path, size, sha256")
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", default=BUCKET)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--part-size", type=int, default=16 * MIB, help="bytes")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--state", type=Path, help="eventbak: the state dir to make")
    args = ap.parse_args(argv)
    if args.tool == "eventbak":
        if args.state is None:
            ap.error("eventbak needs --state")
        result = run_eventbak(args)
    else:
        result = run_boto3(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
