"""Backups into S3 vaults end to end: `eventbak backup` as a real subprocess
against real S3 servers over HTTP (moto and SeaweedFS, through a counting and
fault-injecting proxy on loopback), resumed after real signals, restored and
compared file by file (hashes)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventbak.core import events as ev
from eventbak.core.state import State
from eventbak.statedir import log_path, read_state
from tests import crashutil as cu
from tests import servers
from tests.conftest import Bucket
from tests.faultproxy import FaultProxy
from tests.treeutil import describe

pytestmark = pytest.mark.slow

MIB = 1 << 20
ARCHIVE = 12 * MIB  # three 5 MiB parts at most: multipart with S3's minimum part size


def make_tree(root: Path, seed: int = 3) -> None:
    """About 40 MB: incompressible files that fill several multipart archives,
    one file larger than an archive (split across three), small text files."""
    rng = random.Random(seed)
    (root / "media").mkdir(parents=True)
    for i in range(6):
        (root / "media" / f"clip{i}.bin").write_bytes(rng.randbytes(3 * MIB + i * 77_777))
    (root / "media" / "huge.bin").write_bytes(rng.randbytes(26 * MIB + 123))
    docs = root / "docs" / "notes"
    docs.mkdir(parents=True)
    for i in range(120):
        (docs / f"n{i:03d}.txt").write_bytes(b"note %d\n" % i * (i * 7 + 1))
    os.symlink("docs/notes/n001.txt", root / "link")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("s3tree") / "src"
    make_tree(src)
    return src


def cmd(state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "eventbak", "--state-dir", str(state), *args]


def backup_cmd(state: Path, url: str, src: Path, *extra: str) -> list[str]:
    return cmd(state, "backup", str(src), "--vault", url, "--archive-size", str(ARCHIVE), *extra)


def run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def restore_and_compare(tmp: Path, state: Path, src: Path, *extra: str) -> None:
    """Restore everything (`extra`: e.g. --vault URL, when the backup went
    through a proxy that is closed now) and compare every file's hash."""
    back = tmp / f"back-{time.monotonic_ns()}"
    done = run(cmd(state, "restore", "--to", str(back), *extra))
    assert done.returncode == 0, done.stdout + done.stderr
    assert describe(back / str(src).lstrip("/")) == describe(src)


def uploaded_keys(state: Path) -> set[str]:
    st, _ = read_state(state)
    return {a.key for a in st.archives.values() if a.state == "uploaded"}


def objects(bucket: Bucket, prefix: str = "host1/") -> dict[str, int]:
    """The vault's objects but its marker (eventbak.json, which no log records)."""
    out: dict[str, int] = {}
    pages = bucket.client().get_paginator("list_objects_v2").paginate(
        Bucket=bucket.name, Prefix=prefix
    )
    for page in pages:
        for o in page.get("Contents", []):
            out[o["Key"].removeprefix(prefix)] = o["Size"]
    out.pop("eventbak.json", None)
    return out


def in_log(st: State) -> dict[str, int]:
    """What the log says the vault holds: uploaded archives and the sessions' manifests."""
    held = {a.key: a.size for a in st.archives.values() if a.state == "uploaded"}
    return held | {s.catalog.key: s.catalog.size for s in st.sessions.values() if s.catalog}


def verify_log(state: Path) -> None:
    done = run(cmd(state, "replay", "--verify"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_backup_to_s3_in_parts_and_restore_is_identical(
    s3_bucket: Bucket, source: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with FaultProxy(s3_bucket.endpoint_url) as proxy:
        url = s3_bucket.via(proxy.endpoint_url).url(part_size="5MiB", concurrency=3)
        done = run(backup_cmd(state, url, source))
        assert done.returncode == 0, done.stdout + done.stderr
        assert " completed: " in done.stdout
        st, image = read_state(state)
        archives = [a for a in st.archives.values() if a.state == "uploaded"]
        assert len(archives) >= 4
        parts = [r.event for r in image.records if isinstance(r.event, ev.PartUploaded)]
        multipart = [a for a in archives if a.size > 5 * MIB]
        assert multipart and len(parts) == sum(-(-a.size // (5 * MIB)) for a in multipart)
        # every part went up once, from outside eventbak's point of view
        assert proxy.count(op="UploadPart", fault=None) == len(parts)
        assert proxy.count(op="CompleteMultipartUpload") == len(multipart)
        # one PutObject per one-part archive, the session's manifest, the vault's marker
        assert proxy.count(op="PutObject") == len(archives) - len(multipart) + 2
    for a in archives:
        assert a.checksum and a.storage_class == "STANDARD"
        if a.size > 5 * MIB:
            assert a.checksum.endswith(f"-{-(-a.size // (5 * MIB))}")
        assert "/" + a.session + "/" in "/" + a.key and ".txt" not in a.key
    # the bucket holds exactly what the log says, and nothing else under the prefix
    assert objects(s3_bucket) == in_log(st)
    assert st.sessions[archives[0].session].vault == f"s3://{s3_bucket.name}/host1"
    restore_and_compare(tmp_path, state, source, "--vault", s3_bucket.url())
    verify_log(state)


def _sent_parts(proxy: FaultProxy) -> set[tuple[str, int]]:
    """(upload id, part number) of every UploadPart the proxy saw."""
    out = set()
    for r in proxy.requests:
        if r.op == "UploadPart":
            q = dict(p.split("=", 1) for p in r.query.split("&"))
            out.add((q["uploadId"], int(q["partNumber"])))
    return out


def _parts_logged(state: Path) -> set[tuple[str, int]]:
    return {(e.upload_id, e.part) for e in cu.events_now(state) if isinstance(e, ev.PartUploaded)}


def test_sigkill_mid_multipart_resumes_sending_only_missing_parts(
    s3_bucket: Bucket, source: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with FaultProxy(s3_bucket.endpoint_url) as proxy:
        url = s3_bucket.via(proxy.endpoint_url).url(part_size="5MiB", concurrency=2)
        for kill_after_parts in (2, 5):
            proc = subprocess.Popen(
                backup_cmd(state, url, source), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            want = len(_parts_logged(state)) + kill_after_parts
            cu.wait_until(state, proc, lambda es, want=want: len(
                {(e.upload_id, e.part) for e in es if isinstance(e, ev.PartUploaded)}
            ) >= want)  # fmt: skip
            assert proc.poll() is None, proc.communicate()[1].decode()
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        confirmed = _parts_logged(state)
        st, _ = read_state(state)
        live = {a.upload_id for a in st.archives.values() if a.state == "uploading"}
        proxy.reset_log()
        done = run(backup_cmd(state, url, source))
        assert done.returncode == 0 and " completed: " in done.stdout, done.stderr
        sent_again = _sent_parts(proxy)
        # no part the log had confirmed was sent again: the vault's ListParts
        # and the log agreed; only the missing parts of the open uploads went up
        assert not sent_again & confirmed
        # each upload open at the kill was reconciled: listed, or found
        # completed by HeadObject (then nothing more is sent for it)
        for upload in live:
            asked = [r.op for r in proxy.requests if f"uploadId={upload}" in r.query]
            assert not asked or asked[0] == "ListParts", asked
    st, _ = read_state(state)
    (session,) = st.sessions.values()
    assert session.state == "completed" and session.crashes == 2
    # the bucket holds exactly the uploaded archives: no leaked uploads either
    assert objects(s3_bucket) == in_log(st)
    leftover = s3_bucket.client().list_multipart_uploads(Bucket=s3_bucket.name)
    assert leftover.get("Uploads", []) == []
    restore_and_compare(tmp_path, state, source, "--vault", s3_bucket.url())


def test_an_upload_the_log_never_recorded_is_aborted_and_others_are_left_alone(
    s3_bucket: Bucket, source: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    url = s3_bucket.url(part_size="5MiB")
    proc = subprocess.Popen(
        backup_cmd(state, url, source), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    cu.wait_until(state, proc, lambda es: any(isinstance(e, ev.PartUploaded) for e in es))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    st, _ = read_state(state)
    (sid,) = st.sessions
    client = s3_bucket.client()
    # what a crash between CreateMultipartUpload and its event leaves, and an
    # upload of another state dir's session sharing the bucket
    ours = client.create_multipart_upload(
        Bucket=s3_bucket.name, Key=f"host1/archives/{sid}/{sid}-999999.tar.zst"
    )["UploadId"]
    theirs = client.create_multipart_upload(
        Bucket=s3_bucket.name, Key="host1/archives/20990101T000000Z-beef/x-000001.tar.zst"
    )["UploadId"]
    done = run(backup_cmd(state, url, source))
    assert done.returncode == 0 and " completed: " in done.stdout, done.stderr
    open_ids = {u["UploadId"] for u in client.list_multipart_uploads(
        Bucket=s3_bucket.name).get("Uploads", [])}  # fmt: skip
    assert ours not in open_ids and theirs in open_ids
    st, _ = read_state(state)
    assert any(ours in name for where, name in st.orphans if where.startswith("s3://"))


def test_throttling_and_dropped_connections_are_retried(
    s3_bucket: Bucket, source: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with FaultProxy(s3_bucket.endpoint_url) as proxy:
        proxy.slowdown(0.2, seed=1)
        proxy.drop(0.25, seed=2, op=("UploadPart", "PutObject"))
        url = s3_bucket.via(proxy.endpoint_url).url(part_size="5MiB")
        done = run(backup_cmd(state, url, source))
        assert done.returncode == 0 and " completed: " in done.stdout, done.stdout + done.stderr
        assert proxy.count(fault="error") > 0 and proxy.count(fault="drop") > 0
    restore_and_compare(tmp_path, state, source, "--vault", s3_bucket.url())
    verify_log(state)


def test_server_losing_its_state_mid_upload_pauses_then_completes(
    fresh_s3_server: servers.Server, source: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    bucket = Bucket(fresh_s3_server, "eb-state-gone", fresh_s3_server.endpoint_url)
    bucket.client().create_bucket(Bucket=bucket.name)
    with FaultProxy(fresh_s3_server.endpoint_url) as proxy:
        # the first archive's completion is held in the proxy while the server
        # dies and comes back empty: nothing was stored whole before the loss
        held = proxy.pause(op="CompleteMultipartUpload")
        url = bucket.via(proxy.endpoint_url).url(part_size="5MiB", concurrency=1)
        proc = subprocess.Popen(
            backup_cmd(state, url, source), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        held.wait_held(1, timeout=120)
        servers.restart_empty(fresh_s3_server)  # same port, bucket and uploads gone
        held.release()
        _, err = proc.communicate(timeout=300)
        # the bucket is gone with the server's state: paused, one line
        assert proc.returncode in (4, 5), err
        assert b"Traceback" not in err and b"paused" in err
        verify_log(state)
        bucket.client().create_bucket(Bucket=bucket.name)  # what the user would do
        done = run(backup_cmd(state, url, source))
        assert done.returncode == 0 and " completed: " in done.stdout, done.stdout + done.stderr
    _, image = read_state(state)
    lost = [r.event for r in image.records if isinstance(r.event, ev.UploadLost)]
    assert lost, "the upload the server forgot was recorded lost and sent anew"
    restore_and_compare(tmp_path, state, source, "--vault", bucket.url())


def test_changing_concurrency_and_part_size_resumes_the_same_session(
    s3_bucket: Bucket, source: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        backup_cmd(state, s3_bucket.url(part_size="5MiB", concurrency=1), source),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    cu.wait_until(state, proc, lambda es: any(isinstance(e, ev.PartUploaded) for e in es))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    done = run(backup_cmd(state, s3_bucket.url(part_size="8MiB", concurrency=4), source))
    assert done.returncode == 0 and " completed: " in done.stdout, done.stderr
    st, _ = read_state(state)
    (session,) = st.sessions.values()
    assert session.pauses == ["signal SIGTERM"] and "concurrency=4" in session.vault_url
    restore_and_compare(tmp_path, state, source)


# -- bad input: one line, a documented exit code, the log consistent ---------------


def test_missing_bucket_is_one_line_exit_4(s3_server: servers.Server, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    url = Bucket(s3_server, "eb-no-such-bucket", s3_server.endpoint_url).url()
    done = run(cmd(tmp_path / "state", "backup", str(src), "--vault", url))
    assert done.returncode == 4, done.stderr
    assert "eb-no-such-bucket" in done.stderr and "does not exist" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not log_path(tmp_path / "state").exists() or verify_log(tmp_path / "state") is None


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("storage_class=COLD", "unknown storage_class 'COLD'"),
        ("part_size=1MiB", "part_size must be 5MiB to 5GiB"),
        ("concurrency=lots", "concurrency"),
        ("colour=blue", "unknown option 'colour'"),
        ("endpoint_url=ftp://x", "endpoint_url"),
    ],
)
def test_malformed_s3_options_are_usage_errors(tmp_path: Path, query: str, needle: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    done = run(cmd(tmp_path / "state", "backup", str(src), "--vault", f"s3://bkp/h?{query}"))
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not log_path(tmp_path / "state").exists() or verify_log(tmp_path / "state") is None


def test_unreachable_endpoint_is_one_line_exit_5(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    port = servers.free_ports(1)[0]
    url = f"s3://bkp/h?endpoint_url=http://127.0.0.1:{port}&region=us-east-1"
    started = time.monotonic()
    done = run(cmd(tmp_path / "state", "backup", str(src), "--vault", url))
    assert done.returncode == 5, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60
    assert not log_path(tmp_path / "state").exists() or verify_log(tmp_path / "state") is None


def test_credentials_never_reach_output_or_the_event_log(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1000))
    state = tmp_path / "state"
    outs = [run(cmd(state, "-v", "backup", str(src), "--vault", s3_bucket.url()))]
    outs.append(run(cmd(state, "replay")))
    outs.append(run(cmd(state, "inspect")))
    outs.append(run(cmd(state, "status")))
    for done in outs:
        assert done.returncode == 0, done.stderr
        for secret in (servers.TEST_SECRET, servers.TEST_KEY_ID):
            assert secret not in done.stdout + done.stderr
    raw = log_path(state).read_bytes()
    assert servers.TEST_SECRET.encode() not in raw and servers.TEST_KEY_ID.encode() not in raw


def test_crash_matrix_sigkill_at_many_points_against_s3(
    moto_server: servers.Server, source: Path, tmp_path: Path
) -> None:
    """The crash matrix of test_resume.py, against S3 (moto): killed after the
    n-th event of a run, for n spread over the whole run, then resumed once."""
    ref_bucket = Bucket(moto_server, "eb-matrix-ref", moto_server.endpoint_url)
    ref_bucket.client().create_bucket(Bucket=ref_bucket.name)
    ref = tmp_path / "ref"
    done = run(backup_cmd(ref, ref_bucket.url(part_size="5MiB"), source))
    assert done.returncode == 0, done.stderr
    total = len(read_state(ref)[1].records)
    points = sorted({2 + i * (total - 4) // 7 for i in range(8)})
    for n in points:
        bucket = Bucket(moto_server, f"eb-matrix-{n}", moto_server.endpoint_url)
        bucket.client().create_bucket(Bucket=bucket.name)
        state = tmp_path / f"s{n}"
        with FaultProxy(bucket.endpoint_url) as proxy:
            url = bucket.via(proxy.endpoint_url).url(part_size="5MiB", concurrency=2)
            proc = subprocess.Popen(
                backup_cmd(state, url, source), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            cu.wait_until(state, proc, cu.after_n_events(n))
            if proc.poll() is not None:
                continue  # finished before that point (the last few events)
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            confirmed = _parts_logged(state)
            proxy.reset_log()
            again = run(backup_cmd(state, url, source))
            assert again.returncode == 0 and " completed: " in again.stdout, again.stderr
            assert not _sent_parts(proxy) & confirmed, f"kill after event {n}"
        st, _ = read_state(state)
        assert objects(bucket) == in_log(st), f"kill after event {n}"
        assert bucket.client().list_multipart_uploads(Bucket=bucket.name).get("Uploads", []) == []
        assert {s.state for s in st.sessions.values()} == {"completed"}
        restore_and_compare(tmp_path, state, source, "--vault", bucket.url())


def test_restore_from_deep_archive_thaws_exactly_the_needed_archives_first(
    moto_server: servers.Server, source: Path, tmp_path: Path
) -> None:
    """moto keeps DEEP_ARCHIVE objects unreadable until RestoreObject (which it
    completes at once), so reading before the thaw would fail."""
    bucket = Bucket(moto_server, "eb-deep-archive", moto_server.endpoint_url)
    bucket.client().create_bucket(Bucket=bucket.name)
    state = tmp_path / "state"
    url = bucket.url(part_size="5MiB", storage_class="DEEP_ARCHIVE")
    done = run(backup_cmd(state, url, source))
    assert done.returncode == 0, done.stderr
    st, _ = read_state(state)
    archives = [a for a in st.archives.values() if a.state == "uploaded"]
    assert {a.storage_class for a in archives} == {"DEEP_ARCHIVE"}
    # the session's manifest is in the bucket too, in a hot class: readable
    # with no thaw (what recovering from the vault alone will read)
    (session,) = st.sessions.values()
    assert session.catalog is not None
    catalog = bucket.client().get_object(Bucket=bucket.name, Key=f"host1/{session.catalog.key}")
    assert catalog.get("StorageClass", "STANDARD") == "STANDARD"
    assert hashlib.sha256(catalog["Body"].read()).hexdigest() == session.catalog.sha256
    with FaultProxy(bucket.endpoint_url) as proxy:
        via = bucket.via(proxy.endpoint_url).url(storage_class="DEEP_ARCHIVE")
        # Expedited does not exist for Deep Archive: refused before any request
        refused = run(cmd(state, "restore", "--to", str(tmp_path / "x"), "--vault", via,
                          "--tier", "Expedited"))  # fmt: skip
        assert refused.returncode == 2 and "Expedited" in refused.stderr, refused.stderr
        assert proxy.count(op="RestoreObject") == 0
        # one file: only the archives holding it are thawed and read
        one = str(source / "docs" / "notes" / "n005.txt")
        back = tmp_path / "one"
        got = run(cmd(state, "restore", one, "--to", str(back), "--vault", via, "--poll", "0.2"))
        assert got.returncode == 0, got.stderr
        thawed = proxy.count(op="RestoreObject")
        assert 1 <= thawed < len(archives)
        assert (back / one.lstrip("/")).read_bytes() == Path(one).read_bytes()
        # everything: the archives still frozen are thawed, the thawed ones are
        # not asked again; every archive is thawed before it is read
        restore_and_compare(tmp_path, state, source, "--vault", via, "--poll", "0.2",
                            "--tier", "Bulk", "--thaw-days", "3")  # fmt: skip
        order = [(r.op, r.path) for r in proxy.requests if r.op in ("RestoreObject", "GetObject")]
        for a in archives:
            path = f"/{bucket.name}/host1/{a.key}"
            ops = [op for op, p in order if p == path]
            assert ops[0] == "RestoreObject" and ops.count("RestoreObject") == 1, (a.key, ops)
            assert 1 <= ops.count("GetObject") <= 2, (a.key, ops)  # once per restore reading it


def test_wrong_credentials_are_one_line_exit_4_and_the_log_stays_clean(
    seaweed_server: servers.Server, tmp_path: Path
) -> None:
    """SeaweedFS checks keys here (tests/servers.py gives it the test keys);
    moto accepts any."""
    bucket = Bucket(seaweed_server, "eb-wrong-keys", seaweed_server.endpoint_url)
    bucket.client().create_bucket(Bucket=bucket.name)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(2000))
    state = tmp_path / "state"
    assert run(cmd(state, "backup", str(src), "--vault", bucket.url())).returncode == 0
    (src / "g").write_text("changed")
    wrong = "wrong-secret-0123456789-abcdefghij"
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": wrong}
    done = subprocess.run(
        cmd(state, "backup", str(src), "--vault", bucket.url()), capture_output=True,
        text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert "credentials were refused" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert wrong not in done.stdout + done.stderr and servers.TEST_SECRET not in done.stderr
    verify_log(state)


def test_a_vault_refusal_during_the_sweep_pauses_the_new_session(
    moto_server: servers.Server, tmp_path: Path
) -> None:
    bucket = Bucket(moto_server, "eb-sweep-refused", moto_server.endpoint_url)
    bucket.client().create_bucket(Bucket=bucket.name)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1000))
    state = tmp_path / "state"
    with FaultProxy(bucket.endpoint_url) as proxy:
        proxy.error(403, "AccessDenied", "Access Denied", op="ListMultipartUploads")
        url = bucket.via(proxy.endpoint_url).url()
        done = run(cmd(state, "backup", str(src), "--vault", url))
    assert done.returncode == 4, done.stderr
    assert "access denied" in done.stderr.lower() and "Traceback" not in done.stderr
    st, _ = read_state(state)
    (session,) = st.sessions.values()
    assert session.state == "paused" and session.pauses[0].startswith("error: ")
    verify_log(state)
    again = run(cmd(state, "backup", str(src), "--vault", bucket.url()))
    assert again.returncode == 0 and " completed: " in again.stdout, again.stderr


def test_encrypted_backup_to_s3_in_parts_with_its_passphrase_key(
    s3_bucket: Bucket, source: Path, tmp_path: Path
) -> None:
    """Encryption through the real S3 servers (both verify every part's
    checksum): multipart .tar.zst.age objects, the passphrase key object in
    the bucket beside them, and a restore from the bucket alone once the
    state dir's copy of the key is gone."""
    state = tmp_path / "state"
    cfg = tmp_path / "eventbak.toml"
    cfg.write_text("[encryption]\npassphrase_command = \"printf 'a long passphrase\\\\n'\"\n")
    url = s3_bucket.url(part_size="5MiB", concurrency=3)
    done = run([*backup_cmd(state, url, source)[:3], "--config", str(cfg),
                *backup_cmd(state, url, source)[3:]])  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    st, _ = read_state(state)
    archives = [a for a in st.archives.values() if a.state == "uploaded"]
    assert any(a.size > 5 * MIB for a in archives)  # at least one went in parts
    assert all(a.key.endswith(".tar.zst.age") and a.layers == ["zstd", "age"] for a in archives)
    (recipient,) = {r for s in st.sessions.values() for r in s.recipients}
    stored = objects(s3_bucket)
    assert stored == in_log(st) | {
        f"keys/{recipient}.age": (state / "keys" / f"{recipient}.age").stat().st_size
    }
    shutil.rmtree(state / "keys")
    back = tmp_path / "back"
    done = run([sys.executable, "-m", "eventbak", "--config", str(cfg), "--state-dir",
                str(state), "restore", "--to", str(back)])  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert describe(back / str(source).lstrip("/")) == describe(source)
