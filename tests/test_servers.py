"""The test servers (tests/servers.py, tests/conftest.py) and the fault proxy
(tests/faultproxy.py): they must really serve S3, really differ where the S3
vault's tests rely on it, and really inject the faults they claim to.

What these tests pin down about the servers (boto3 1.44, moto 5.2.5,
SeaweedFS 4.48): both do multipart with per-part ChecksumSHA256; only
SeaweedFS verifies checksums (BadDigest) and signatures; moto's HeadObject
gives the composite checksum without its "-N" suffix (GetObject has it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests import servers
from tests.conftest import Bucket, bucket_name
from tests.faultproxy import FaultProxy, s3_operation

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def composite(parts: list[bytes]) -> str:
    """S3's COMPOSITE SHA-256 of a multipart object: the hash of the parts'
    raw digests, then "-" and the number of parts."""
    joined = b"".join(hashlib.sha256(p).digest() for p in parts)
    return f"{b64sha(joined)}-{len(parts)}"


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


@pytest.fixture
def proxied(s3_bucket: Bucket) -> Iterator[tuple[Bucket, FaultProxy]]:
    with FaultProxy(s3_bucket.server.endpoint_url) as proxy:
        yield s3_bucket.via(proxy.endpoint_url), proxy


# -- pure ---------------------------------------------------------------------


def test_operation_names() -> None:
    cases = {
        ("PUT", "/b/k", "partNumber=2&uploadId=abc"): "UploadPart",
        ("PUT", "/b/k/deeper", ""): "PutObject",
        ("PUT", "/b", ""): "CreateBucket",
        ("POST", "/b/k", "uploads"): "CreateMultipartUpload",
        ("POST", "/b/k", "uploads="): "CreateMultipartUpload",
        ("POST", "/b/k", "uploadId=abc"): "CompleteMultipartUpload",
        ("POST", "/b/k", "restore"): "RestoreObject",
        ("POST", "/b", "delete"): "DeleteObjects",
        ("GET", "/b/k", "uploadId=abc&max-parts=1000"): "ListParts",
        ("GET", "/b", "uploads"): "ListMultipartUploads",
        ("GET", "/b", "list-type=2&prefix=host1%2F"): "ListObjectsV2",
        ("GET", "/b/k", ""): "GetObject",
        ("GET", "/", ""): "ListBuckets",
        ("HEAD", "/b/k", ""): "HeadObject",
        ("HEAD", "/b", ""): "HeadBucket",
        ("DELETE", "/b/k", "uploadId=abc"): "AbortMultipartUpload",
        ("DELETE", "/b/k", ""): "DeleteObject",
        ("DELETE", "/b", ""): "DeleteBucket",
    }
    for (method, path, query), op in cases.items():
        assert s3_operation(method, path, query) == op, (method, path, query)


def test_bucket_url_and_name() -> None:
    server = servers.Server("moto", "http://127.0.0.1:5000", None, None, None)
    bucket = Bucket(server, "eb-x-0123", server.endpoint_url)
    assert bucket.url(storage_class="DEEP_ARCHIVE", part_size="5MiB") == (
        "s3://eb-x-0123/host1?endpoint_url=http://127.0.0.1:5000&region=us-east-1"
        "&storage_class=DEEP_ARCHIVE&part_size=5MiB"
    )
    assert bucket.via("http://127.0.0.1:6000/").url(prefix="") == (
        "s3://eb-x-0123?endpoint_url=http://127.0.0.1:6000&region=us-east-1"
    )
    for label in ("test_x[moto]", "A" * 80, "", "--weird..name--"):
        name = bucket_name(label)
        assert 3 <= len(name) <= 63 and name == name.lower(), name
        assert name[0].isalnum() and name[-1].isalnum() and ".." not in name, name


def test_credentials_are_the_test_ones() -> None:
    assert os.environ["AWS_ACCESS_KEY_ID"] == servers.TEST_KEY_ID
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == servers.TEST_SECRET
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    assert "AWS_PROFILE" not in os.environ


def test_a_server_that_never_answers_fails_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet = "import sys, time; print('fake server up', flush=True); time.sleep(60)"
    monkeypatch.setattr(servers, "_moto_args", lambda port: [sys.executable, "-c", quiet])
    monkeypatch.setattr(servers, "MOTO_START_TIMEOUT", 1.0)
    t0 = time.monotonic()
    with pytest.raises(servers.ServerStartError, match="no answer to ListBuckets") as info:
        servers.start_moto(tmp_path)
    assert "fake server up" in str(info.value)
    assert time.monotonic() - t0 < 15
    dead = "import sys; print('cannot start', flush=True); sys.exit(3)"
    monkeypatch.setattr(servers, "_moto_args", lambda port: [sys.executable, "-c", dead])
    with pytest.raises(servers.ServerStartError, match="exited with status 3") as info:
        servers.start_moto(tmp_path)
    assert "cannot start" in str(info.value)


# -- both servers, through the proxy ------------------------------------------


def test_multipart_with_part_checksums_round_trips(
    proxied: tuple[Bucket, FaultProxy],
) -> None:
    bucket, proxy = proxied
    s3 = bucket.client()
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(MIB)]
    up = s3.create_multipart_upload(Bucket=bucket.name, Key="host1/a", ChecksumAlgorithm="SHA256")
    done = []
    for n, data in enumerate(parts, 1):
        answer = s3.upload_part(
            Bucket=bucket.name,
            Key="host1/a",
            UploadId=up["UploadId"],
            PartNumber=n,
            Body=data,
            ChecksumSHA256=b64sha(data),
        )
        done.append({"PartNumber": n, "ETag": answer["ETag"], "ChecksumSHA256": b64sha(data)})
    listed = s3.list_parts(Bucket=bucket.name, Key="host1/a", UploadId=up["UploadId"])
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [
        (1, 5 * MIB),
        (2, 5 * MIB),
        (3, MIB),
    ]
    s3.complete_multipart_upload(
        Bucket=bucket.name,
        Key="host1/a",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": done},
    )
    got = s3.get_object(Bucket=bucket.name, Key="host1/a", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"".join(parts)
    assert got["ChecksumSHA256"] == composite(parts)
    head = s3.head_object(Bucket=bucket.name, Key="host1/a", ChecksumMode="ENABLED")
    assert head["ContentLength"] == 11 * MIB
    if bucket.server.name == "moto":
        assert head["ChecksumSHA256"] == composite(parts).rsplit("-", 1)[0]
    else:
        assert head["ChecksumSHA256"] == composite(parts)

    assert proxy.count(op="UploadPart") == 3
    assert proxy.count("PUT", query_contains=("partNumber=", "uploadId=")) == 3
    assert proxy.count(op="CreateMultipartUpload") == 1
    assert proxy.count("POST", query_contains="uploads") == 1
    assert proxy.count(op="CompleteMultipartUpload") == 1
    assert proxy.count(op="ListParts") == 1
    assert proxy.count(op="PutObject") == 0
    assert all(r.status == 200 and r.fault is None for r in proxy.requests)


def test_concurrent_keep_alive_clients(proxied: tuple[Bucket, FaultProxy]) -> None:
    bucket, proxy = proxied
    s3 = bucket.client(max_pool_connections=8)
    bodies = {f"host1/k{i:02d}": os.urandom(64 * 1024 + i) for i in range(32)}

    def put_and_get(key: str) -> bool:
        s3.put_object(Bucket=bucket.name, Key=key, Body=bodies[key])
        return bool(s3.get_object(Bucket=bucket.name, Key=key)["Body"].read() == bodies[key])

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(put_and_get, bodies))
    assert proxy.count(op="PutObject") == 32
    assert proxy.count(op="GetObject") == 32


def test_slowdown(proxied: tuple[Bucket, FaultProxy]) -> None:
    bucket, proxy = proxied
    proxy.slowdown(share=1.0, op="PutObject")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        bucket.client(attempts=1).put_object(Bucket=bucket.name, Key="host1/x", Body=b"x")
    assert (error_code(info.value), status(info.value)) == ("SlowDown", 503)
    # Only the chosen kind of request: the others pass.
    assert bucket.client().list_objects_v2(Bucket=bucket.name)["KeyCount"] == 0
    assert proxy.count(op="PutObject", fault="error") == 1
    assert proxy.count(op="ListObjectsV2", fault=None) == 1

    proxy.clear()
    proxy.reset_log()
    # Seed 7's draws refuse the 2nd, 4th, 7th and 9th request that follow (each
    # retried once, after up to 1 s): sequential requests make it exact.
    proxy.slowdown(share=0.3, seed=7, op="PutObject")
    patient = boto3.client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 10}),
    )
    for i in range(6):
        patient.put_object(Bucket=bucket.name, Key=f"host1/k{i}", Body=b"y" * i)
    assert bucket.client().list_objects_v2(Bucket=bucket.name)["KeyCount"] == 6
    assert proxy.count(op="PutObject", fault="error") == 4
    assert proxy.count(op="PutObject", fault=None) == 6
    assert [r.fault for r in proxy.requests if r.op == "PutObject"] == [
        None, "error", None, "error", None, None, "error", None, "error", None,
    ]  # fmt: skip


@pytest.mark.parametrize("phase", ["request", "response", "mid_response"])
def test_drop(proxied: tuple[Bucket, FaultProxy], phase: Any) -> None:
    bucket, proxy = proxied
    s3 = bucket.client(attempts=1)
    s3.put_object(Bucket=bucket.name, Key="host1/big", Body=b"b" * 100_000)
    proxy.drop(share=1.0, phase=phase, op=("PutObject", "GetObject"))
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        s3.put_object(Bucket=bucket.name, Key="host1/new", Body=b"n" * 1000)
    with pytest.raises(
        (botocore.exceptions.ConnectionClosedError, botocore.exceptions.ResponseStreamingError)
    ):
        s3.get_object(Bucket=bucket.name, Key="host1/big")["Body"].read()
    # The client cannot tell whether the PUT happened; the backend can.
    direct = bucket.server.client()
    keys = {o["Key"] for o in direct.list_objects_v2(Bucket=bucket.name).get("Contents", [])}
    assert ("host1/new" in keys) == (phase != "request")
    assert proxy.count(fault="drop") == 2
    proxy.clear()
    assert s3.get_object(Bucket=bucket.name, Key="host1/big")["Body"].read() == b"b" * 100_000


def test_pause_holds_a_request_until_released(proxied: tuple[Bucket, FaultProxy]) -> None:
    bucket, proxy = proxied
    s3 = bucket.client()
    held = proxy.pause(op="PutObject")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(s3.put_object, Bucket=bucket.name, Key="host1/p", Body=b"p")
        held.wait_held(1, timeout=10)
        direct = bucket.server.client()
        assert direct.list_objects_v2(Bucket=bucket.name)["KeyCount"] == 0
        held.release()
        future.result(timeout=10)
    assert direct.list_objects_v2(Bucket=bucket.name)["KeyCount"] == 1


# -- SeaweedFS checks what moto does not ----------------------------------------


def test_seaweedfs_refuses_a_wrong_checksum(seaweed_server: servers.Server) -> None:
    name = bucket_name("badsum")
    seaweed_server.client().create_bucket(Bucket=name)
    with FaultProxy(seaweed_server.endpoint_url) as proxy:
        s3 = servers.s3_client(proxy.endpoint_url)
        data = os.urandom(5 * MIB)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.put_object(Bucket=name, Key="k", Body=data, ChecksumSHA256=b64sha(b"other"))
        assert error_code(info.value) == "BadDigest"
        up = s3.create_multipart_upload(Bucket=name, Key="m", ChecksumAlgorithm="SHA256")
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.upload_part(
                Bucket=name,
                Key="m",
                UploadId=up["UploadId"],
                PartNumber=1,
                Body=data,
                ChecksumSHA256=b64sha(data[:-1]),
            )
        assert (error_code(info.value), status(info.value)) == ("BadDigest", 400)
        good = s3.upload_part(
            Bucket=name,
            Key="m",
            UploadId=up["UploadId"],
            PartNumber=1,
            Body=data,
            ChecksumSHA256=b64sha(data),
        )
        assert good["ChecksumSHA256"] == b64sha(data)
        s3.abort_multipart_upload(Bucket=name, Key="m", UploadId=up["UploadId"])


def test_moto_does_not_verify_checksums(moto_server: servers.Server) -> None:
    """If this starts failing, moto learned to check: tests may rely on it."""
    s3 = moto_server.client()
    name = bucket_name("nosum")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"data", ChecksumSHA256=b64sha(b"other"))
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)


def test_seaweedfs_checks_signatures_through_the_proxy(seaweed_server: servers.Server) -> None:
    """The proxy forwards Host unchanged: SeaweedFS (which has the test keys as
    its admin identity) accepts the signature made for the proxy's address."""
    with FaultProxy(seaweed_server.endpoint_url) as proxy:
        assert "Buckets" in servers.s3_client(proxy.endpoint_url).list_buckets()
        cases = {
            "SignatureDoesNotMatch": (servers.TEST_KEY_ID, "wrong-secret"),
            "InvalidAccessKeyId": ("AKIDUNKNOWN", servers.TEST_SECRET),
        }
        for code, (key_id, secret) in cases.items():
            bad = boto3.client(
                "s3",
                endpoint_url=proxy.endpoint_url,
                region_name="us-east-1",
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
                config=Config(retries={"total_max_attempts": 1}),
            )
            with pytest.raises(botocore.exceptions.ClientError) as info:
                bad.list_buckets()
            assert (error_code(info.value), status(info.value)) == (code, 403)


def test_moto_glacier(moto_glacier: tuple[str, Any]) -> None:
    endpoint_url, glacier = moto_glacier
    assert endpoint_url.startswith("http://127.0.0.1:")
    name = bucket_name("vault")
    glacier.create_vault(vaultName=name)
    try:
        assert name in [v["VaultName"] for v in glacier.list_vaults()["VaultList"]]
    finally:
        glacier.delete_vault(vaultName=name)


# -- killed and restarted with the state gone ---------------------------------


@pytest.mark.slow
def test_killed_mid_upload_and_restarted_empty(fresh_s3_server: servers.Server) -> None:
    server = fresh_s3_server
    old_pid, old_url = server.pid, server.endpoint_url
    with FaultProxy(server.endpoint_url) as proxy:
        s3 = servers.s3_client(proxy.endpoint_url)
        s3.create_bucket(Bucket="eb-restart")
        up = s3.create_multipart_upload(Bucket="eb-restart", Key="k")["UploadId"]
        s3.upload_part(Bucket="eb-restart", Key="k", UploadId=up, PartNumber=1, Body=b"1" * MIB)
        # The second part reaches a server that has just been killed and
        # started again, empty, on the same port.
        proxy.on_request(lambda _: servers.restart_empty(server), op="UploadPart", limit=1)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.upload_part(Bucket="eb-restart", Key="k", UploadId=up, PartNumber=2, Body=b"2" * MIB)
        assert error_code(info.value) == "NoSuchBucket"
        assert server.pid != old_pid and server.endpoint_url == old_url
        assert server.generation == 2
        s3.create_bucket(Bucket="eb-restart")
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.list_parts(Bucket="eb-restart", Key="k", UploadId=up)
        assert (error_code(info.value), status(info.value)) == ("NoSuchUpload", 404)
        assert s3.list_objects_v2(Bucket="eb-restart")["KeyCount"] == 0
    # Its own pid, not a name: the old process is gone.
    with pytest.raises(ProcessLookupError):
        assert old_pid is not None
        os.kill(old_pid, 0)


def test_reset_moto(fresh_moto_server: servers.Server) -> None:
    s3 = fresh_moto_server.client()
    s3.create_bucket(Bucket="eb-reset")
    up = s3.create_multipart_upload(Bucket="eb-reset", Key="k")["UploadId"]
    servers.reset_moto(fresh_moto_server)
    assert s3.list_buckets()["Buckets"] == []
    s3.create_bucket(Bucket="eb-reset")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.list_parts(Bucket="eb-reset", Key="k", UploadId=up)
    assert error_code(info.value) == "NoSuchUpload"


# -- the command lines --------------------------------------------------------


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)
    return path.read_text().strip()


def test_faultproxy_as_a_process(moto_server: servers.Server, tmp_path: Path) -> None:
    ready = tmp_path / "proxy-url"
    cmd = [sys.executable, "-m", "tests.faultproxy", "--backend", moto_server.endpoint_url]
    cmd += ["--port", "0", "--ready-file", str(ready), "--slowdown", "1.0", "--op", "PutObject"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE)
    try:
        url = _wait_for_file(ready, proc)
        s3 = servers.s3_client(url)
        assert "Buckets" in s3.list_buckets()
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.put_object(Bucket="eb-any", Key="k", Body=b"1")
        assert error_code(info.value) == "SlowDown"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_up_and_down(tmp_path: Path) -> None:
    env_file = tmp_path / "servers.env"
    run = [sys.executable, "-m", "tests.servers"]
    subprocess.run([*run, "up", "--env-file", str(env_file)], cwd=REPO, check=True, timeout=120)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    pids = [int(env["EVENTBAK_TEST_MOTO_PID"]), int(env["EVENTBAK_TEST_SEAWEEDFS_PID"])]
    try:
        for key in ("EVENTBAK_TEST_MOTO_URL", "EVENTBAK_TEST_SEAWEEDFS_URL"):
            assert "Buckets" in servers.s3_client(env[key]).list_buckets()
        # Detached: in sessions of their own, not ours.
        assert all(os.getsid(pid) == pid for pid in pids)
    finally:
        down = [*run, "down", "--env-file", str(env_file)]
        subprocess.run(down, cwd=REPO, check=True, timeout=60)
    for pid in pids:
        assert servers._wait_gone(pid, 5), pid
    assert not Path(env["EVENTBAK_TEST_SERVERS_DIR"]).exists()
    assert not env_file.exists()
