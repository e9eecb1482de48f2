"""The Glacier vault (eventbak/vaults/glacier.py): the tree hash, and every step
against a real moto server over HTTP on 127.0.0.1 (fixture `moto_server`).

moto 5.2.5 differs from AWS in ways these tests work around, each where it
matters: it answers UploadArchive with a plain SHA-256 where AWS answers with
the tree hash (`MotoGlacierVault`); it finishes jobs after 2 s (Expedited) or
5 s (Standard) of wall-clock time; it answers an unknown job id with a 500
and a job that is not finished with a 404.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import botocore.utils
import pytest
from botocore.stub import Stubber
from botocore.utils import calculate_tree_hash

from eventbak.errors import VaultError, VaultRefused, VaultUnreachable
from eventbak.vaults.glacier import (
    MAX_UPLOAD,
    GlacierVault,
    InventoryEntry,
    JobGone,
    TreeHasher,
    tree_hash,
)
from eventbak.vaults.url import parse_vault

MIB = 1024 * 1024
JOB_TIMEOUT = 30.0  # moto finishes Standard jobs after 5 s


# -- the tree hash --------------------------------------------------------------


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def reference_tree_hash(data: bytes) -> str:
    """AWS's definition, level by level: 1 MiB leaves, pairs combined, an odd
    one carried up unchanged."""
    level = [sha(data[i : i + MIB]) for i in range(0, len(data), MIB)] or [sha(b"")]
    while len(level) > 1:
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [sha(p[0] + p[1]) if len(p) == 2 else p[0] for p in pairs]
    return level[0].hex()


def pattern(size: int) -> bytes:
    # Distinct leaves (a repeated leaf would hide a swapped pair), the same every run.
    return random.Random(size).randbytes(size)


SIZES = [0, 1, MIB - 1, MIB, MIB + 1, 2 * MIB, 3 * MIB, 4 * MIB + 5, 5 * MIB, 7 * MIB + 3]


@pytest.mark.parametrize("size", SIZES)
def test_tree_hash_matches_the_definition_and_botocore(size: int, tmp_path: Path) -> None:
    data = pattern(size)
    want = reference_tree_hash(data)
    assert tree_hash(data) == want
    assert calculate_tree_hash(io.BytesIO(data)) == want
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert tree_hash(path) == want
    assert tree_hash(str(path)) == want
    # Fed in pieces that straddle leaf boundaries.
    hasher = TreeHasher()
    for off in range(0, size, 300_007):
        hasher.update(data[off : off + 300_007])
    assert hasher.hexdigest() == want


def test_tree_hash_vectors_by_hand() -> None:
    assert tree_hash(b"") == hashlib.sha256(b"").hexdigest()
    one = pattern(MIB)
    assert tree_hash(one) == hashlib.sha256(one).hexdigest()  # <= 1 MiB: the plain SHA-256

    data = pattern(MIB + 1)
    assert tree_hash(data) == sha(sha(data[:MIB]) + sha(data[MIB:])).hex()

    data = pattern(3 * MIB)
    h = [sha(data[i * MIB : (i + 1) * MIB]) for i in range(3)]
    assert tree_hash(data) == sha(sha(h[0] + h[1]) + h[2]).hex()  # h2 carried up

    data = pattern(5 * MIB)
    h = [sha(data[i * MIB : (i + 1) * MIB]) for i in range(5)]
    top4 = sha(sha(h[0] + h[1]) + sha(h[2] + h[3]))
    assert tree_hash(data) == sha(top4 + h[4]).hex()  # h4 carried up twice
    assert tree_hash(data) != hashlib.sha256(data).hexdigest()


def test_tree_hasher_digest_does_not_end_the_hash() -> None:
    data = pattern(2 * MIB + 10)
    hasher = TreeHasher()
    hasher.update(data[:MIB])
    assert hasher.hexdigest() == tree_hash(data[:MIB])
    hasher.update(memoryview(data)[MIB:])
    assert hasher.hexdigest() == tree_hash(data)


# -- helpers ----------------------------------------------------------------------


class MotoGlacierVault(GlacierVault):
    """moto returns a plain SHA-256 where AWS returns the tree hash. Accept
    exactly that (not "anything"), so a receipt moto got wrong still fails."""

    def _receipt_checksum_ok(self, returned: str, tree: str, sha256: str) -> bool:
        return returned == sha256


def vault_url(endpoint_url: str, name: str) -> str:
    return f"glacier://{name}?endpoint_url={endpoint_url}&region=us-east-1"


def new_name() -> str:
    return "eventbak-test-" + uuid.uuid4().hex[:12]


@pytest.fixture
def endpoint(moto_server: Any) -> str:
    return str(moto_server.endpoint_url)


@pytest.fixture
def raw_client(endpoint: str) -> Any:
    client = boto3.session.Session().client(
        "glacier", endpoint_url=endpoint, region_name="us-east-1"
    )
    yield client
    client.close()


def make_vault(endpoint: str, cls: type[GlacierVault] = MotoGlacierVault) -> GlacierVault:
    vault = cls(parse_vault(vault_url(endpoint, new_name())))
    vault.prepare()
    return vault


def capture_uploads(vault: GlacierVault) -> list[dict[str, str]]:
    """The headers of every UploadArchive request the vault sends."""
    seen: list[dict[str, str]] = []

    def record(request: Any, **kwargs: Any) -> None:
        if request.method == "POST" and request.url.endswith("/archives"):
            seen.append({k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                         for k, v in request.headers.items()})  # fmt: skip

    vault._client.meta.events.register("before-send.glacier", record)
    return seen


def wait_succeeded(vault: GlacierVault, job_ids: list[str]) -> float:
    """Poll until every job succeeded; seconds taken."""
    start = time.monotonic()
    pending = set(job_ids)
    while pending:
        for job_id in sorted(pending):
            status = vault.job_status(job_id)
            assert status in ("InProgress", "Succeeded"), status
            if status == "Succeeded":
                pending.discard(job_id)
        if pending:
            assert time.monotonic() - start < JOB_TIMEOUT, f"jobs still running: {pending}"
            time.sleep(0.1)
    return time.monotonic() - start


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: a request there fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def offline_vault() -> GlacierVault:
    return GlacierVault(parse_vault(vault_url(f"http://127.0.0.1:{closed_port()}", "cold")))


def stage(tmp_path: Path, name: str, data: bytes) -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


# -- no server needed ---------------------------------------------------------------


def test_constructor_touches_no_network_and_needs_no_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    vault = GlacierVault(parse_vault("glacier://cold?endpoint_url=http://192.0.2.1:9"))
    assert (vault.ref, vault.part_size, vault.concurrency) == ("glacier://cold", None, 1)
    assert vault.url == "glacier://cold?endpoint_url=http://192.0.2.1:9"
    assert vault.key_for("s1", "a7", ".tar.zst") == "archives/s1/a7.tar.zst"
    vault.close()


def test_one_part_vault_answers_without_asking_glacier() -> None:
    vault = offline_vault()  # any request would fail
    assert vault.expected_checksum("ab" * 32, []) == ""
    assert vault.head("archives/s/a.tar") is None
    assert vault.get_small("catalog/s.json") is None
    assert vault.list_parts("k", "u") is None
    assert vault.unfinished({"s"}) == []
    vault.abort("k", "u")
    for step in (
        lambda: vault.begin("k"),
        lambda: vault.send_part("k", "u", 1, Path("/nonexistent"), 0, 1),
        lambda: vault.complete("k", "u", [], 1, "ab" * 32),
        lambda: vault.open("k"),
        lambda: vault.request_thaw("k", "Standard", 1),
    ):
        with pytest.raises(VaultError, match="glacier://cold"):
            step()


def test_put_refuses_more_than_glacier_takes_in_one_upload(tmp_path: Path) -> None:
    vault = offline_vault()
    path, digest = stage(tmp_path, "big", b"x")
    with pytest.raises(VaultError, match="archive_size") as info:
        vault.put("archives/s/a.tar", path, MAX_UPLOAD + 1, digest)
    assert "\n" not in str(info.value)


def test_put_refuses_a_key_that_makes_a_bad_description(tmp_path: Path) -> None:
    vault = offline_vault()
    path, digest = stage(tmp_path, "a", b"x")
    with pytest.raises(VaultError, match="printable ASCII"):
        vault.put("archives/s/" + "a" * 1000, path, 1, digest)
    with pytest.raises(VaultError, match="printable ASCII"):
        vault.put("archives/s/é.tar", path, 1, digest)


@pytest.mark.parametrize(
    ("code", "status", "kind", "exit_code"),
    [
        ("AccessDeniedException", 403, VaultRefused, 4),
        ("UnrecognizedClientException", 403, VaultRefused, 4),
        ("NoLongerSupportedException", 400, VaultRefused, 4),
        ("ServiceUnavailableException", 503, VaultUnreachable, 5),
        ("InvalidParameterValueException", 400, VaultError, 1),
    ],
)
def test_service_errors_translate(code: str, status: int, kind: type, exit_code: int) -> None:
    # Stubbed answers: moto does not check credentials or permissions.
    vault = offline_vault()
    with Stubber(vault._client) as stub:
        stub.add_client_error(
            "create_vault", service_error_code=code, service_message="no\nsecond line",
            http_status_code=status,
        )  # fmt: skip
        if kind is VaultRefused:  # prepare then asks whether the vault exists anyway
            stub.add_client_error("describe_vault", service_error_code=code,
                                  http_status_code=status)  # fmt: skip
        with pytest.raises(VaultError) as info:
            vault.prepare()
    assert type(info.value) is kind
    assert info.value.exit_code == exit_code
    message = str(info.value)
    assert "glacier://cold" in message and "\n" not in message
    for secret in (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")):
        assert not secret or secret not in message


def test_prepare_accepts_an_existing_vault_when_creating_is_denied() -> None:
    vault = offline_vault()
    with Stubber(vault._client) as stub:
        stub.add_client_error("create_vault", "AccessDeniedException", http_status_code=403)
        stub.add_response("describe_vault", {"VaultName": "cold"})
        vault.prepare()
        stub.assert_no_pending_responses()


def test_no_region_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    url = f"glacier://cold?endpoint_url=http://127.0.0.1:{closed_port()}"
    with pytest.raises(VaultRefused, match="region"):
        GlacierVault(parse_vault(url)).prepare()


# -- against moto -------------------------------------------------------------------


def test_prepare_creates_the_vault(endpoint: str, raw_client: Any) -> None:
    name = new_name()
    vault = GlacierVault(parse_vault(vault_url(endpoint, name)))
    vault.prepare()
    vault.prepare()  # idempotent
    names = [v["VaultName"] for v in raw_client.list_vaults()["VaultList"]]
    assert names.count(name) == 1
    vault.close()


def test_put_sends_our_hashes_and_description(
    tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = make_vault(endpoint)
    uploads = capture_uploads(vault)
    hashed_by_botocore: list[object] = []
    real = botocore.utils.calculate_sha256
    monkeypatch.setattr(
        botocore.utils,
        "calculate_sha256",
        lambda *a, **k: hashed_by_botocore.append(a) or real(*a, **k),
    )
    data = pattern(3 * MIB + 17)
    path, digest = stage(tmp_path, "Holiday Photos 2019.tar.zst", data)
    key = vault.key_for("sess1", "arch1", ".tar.zst")

    receipt = vault.put(key, path, len(data), digest)

    assert receipt.key == hashlib.md5(data).hexdigest()  # moto's archive id: the body's MD5
    assert receipt.size == len(data)
    assert receipt.checksum == digest  # moto's plain SHA-256 (AWS: the tree hash)
    (headers,) = uploads
    assert headers["x-amz-sha256-tree-hash"] == reference_tree_hash(data)
    assert headers["x-amz-content-sha256"] == digest
    assert hashed_by_botocore == []  # it was ours: botocore did not read the file once more
    description = headers["x-amz-archive-description"]
    assert json.loads(description) == {"eventbak": 1, "key": key, "sha256": digest}
    assert description == json.dumps(json.loads(description), separators=(",", ":"))
    assert len(description) <= 1024 and all(" " <= c <= "~" for c in description)
    assert "Holiday" not in description and "Photos" not in description
    vault.close()


def test_put_refuses_a_staged_file_that_changed(tmp_path: Path, endpoint: str) -> None:
    vault = make_vault(endpoint)
    uploads = capture_uploads(vault)
    path, digest = stage(tmp_path, "a", b"one")
    path.write_bytes(b"two")
    with pytest.raises(VaultError, match="not sent"):
        vault.put("archives/s/a.tar", path, 3, digest)
    assert uploads == []
    vault.close()


def test_jobs_inventory_and_retrieval(tmp_path: Path, endpoint: str, raw_client: Any) -> None:
    """One vault, both kinds of job running at once (moto: 5 s for the inventory)."""
    vault = make_vault(endpoint)
    raw_client.upload_archive(vaultName=vault.name, body=b"foreign", archiveDescription="mine")
    strict = GlacierVault(vault.spec)  # the vault as written for AWS, unpatched
    small = pattern(200_000)
    small_path, small_digest = stage(tmp_path, "small", small)
    big = pattern(3 * MIB + 5)
    big_path, big_digest = stage(tmp_path, "big", big)
    other = pattern(2 * MIB) + b"other"
    other_path, other_digest = stage(tmp_path, "other", other)

    # Up to 1 MiB the tree hash is the plain SHA-256: even moto's receipt confirms it.
    small_key = "archives/s1/small.tar"
    small_receipt = strict.put(small_key, small_path, len(small), small_digest)
    assert small_receipt.checksum == tree_hash(small) == small_digest
    # Above 1 MiB moto's plain SHA-256 is not the tree hash: AWS's check refuses
    # the receipt (and removes the archive, which no log would know).
    with pytest.raises(VaultError, match="tree hash"):
        strict.put("archives/s1/other.tar", other_path, len(other), other_digest)
    big_key = "archives/s1/big.tar.zst"
    big_receipt = vault.put(big_key, big_path, len(big), big_digest)
    catalog = vault.put_small("catalog/s1.json", b'{"entries":[]}')
    assert catalog.size == 14

    inventory_job = vault.start_inventory()
    started = time.monotonic()
    retrieval_job = vault.start_retrieval(big_receipt.key, "Expedited")
    assert vault.job_status(retrieval_job) == "InProgress"
    with pytest.raises(JobGone, match=retrieval_job):  # moto: 404 until the job finished
        vault.open_job_output(retrieval_job)
    # An unknown job id crashes moto (500): a VaultError naming the vault, not a traceback.
    with pytest.raises(VaultError, match="HTTP 500") as info:
        vault.job_status("NOSUCHJOB")
    assert vault.ref in str(info.value) and "\n" not in str(info.value)

    wait_succeeded(vault, [retrieval_job])
    with vault.open_job_output(retrieval_job) as stream:
        got = hashlib.sha256()
        while chunk := stream.read(100_003):
            got.update(chunk)
    assert got.hexdigest() == big_digest

    # AWS announces the output's tree hash (moto does not): simulate both answers.
    def announce(checksum: str) -> Any:
        def handler(parsed: dict[str, Any], **kwargs: Any) -> None:
            parsed["checksum"] = checksum

        return handler

    right = announce(tree_hash(big))
    vault._client.meta.events.register("after-call.glacier.GetJobOutput", right)
    with vault.open_job_output(retrieval_job) as stream:
        assert hashlib.sha256(stream.read()).hexdigest() == big_digest
    vault._client.meta.events.unregister("after-call.glacier.GetJobOutput", right)
    wrong = announce("0" * 64)
    vault._client.meta.events.register("after-call.glacier.GetJobOutput", wrong)
    with pytest.raises(VaultError, match="tree hash"), vault.open_job_output(retrieval_job) as s:
        s.read()
    vault._client.meta.events.unregister("after-call.glacier.GetJobOutput", wrong)

    wait_succeeded(vault, [inventory_job])
    assert time.monotonic() - started < JOB_TIMEOUT
    entries = {e.archive_id: e for e in vault.read_inventory(inventory_job)}
    foreign = hashlib.md5(b"foreign").hexdigest()
    # "other" was removed after its refused receipt.
    assert set(entries) == {small_receipt.key, big_receipt.key, catalog.key, foreign}
    f = entries[foreign]
    assert (f.description, f.key, f.sha256, f.kind, f.size) == ("mine", None, None, None, 7)
    e = entries[big_receipt.key]
    assert isinstance(e, InventoryEntry)
    assert (e.key, e.sha256, e.kind, e.size) == (big_key, big_digest, "archive", len(big))
    assert e.tree_hash == big_digest  # moto: the plain SHA-256 here too
    assert e.created.year >= 2024
    assert (entries[small_receipt.key].key, entries[small_receipt.key].sha256) == (
        small_key, small_digest,
    )  # fmt: skip
    c = entries[catalog.key]
    assert (c.key, c.kind, c.sha256) == ("catalog/s1.json", "catalog", None)
    vault.close()
    strict.close()


def test_unreachable_endpoint_fails_fast() -> None:
    port = closed_port()
    vault = GlacierVault(parse_vault(vault_url(f"http://127.0.0.1:{port}", "cold")))
    started = time.monotonic()
    with pytest.raises(VaultUnreachable) as info:
        vault.prepare()
    assert time.monotonic() - started < 10
    assert info.value.exit_code == 5
    message = str(info.value)
    assert "glacier://cold" in message and f"127.0.0.1:{port}" in message and "\n" not in message


def test_missing_credentials_are_refused(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    vault = GlacierVault(parse_vault(vault_url(endpoint, new_name())))
    with pytest.raises(VaultRefused, match="credentials") as info:
        vault.prepare()
    assert info.value.exit_code == 4
