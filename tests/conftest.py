"""Shared fixtures: real S3 servers (moto, SeaweedFS), fresh buckets on them, a
Glacier client on moto, and a fault-injecting proxy (tests/faultproxy.py).

scripts/test starts both servers once and exports EVENTBAK_TEST_MOTO_URL and
EVENTBAK_TEST_SEAWEEDFS_URL; without those, the first test that needs a
server starts it here (so plain `pytest` works) and the session stops it.
Tests that need no server start none.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import boto3
import pytest

from tests import servers
from tests.faultproxy import FaultProxy
from tests.servers import Server

# At import, before any test module builds a client or starts a subprocess:
# fake keys, no profile, no config files, no instance metadata lookups.
servers.use_test_credentials()


def _session_server(name: servers.ServerName, factory: pytest.TempPathFactory) -> Iterator[Server]:
    external = servers.external_server(name)
    if external is not None:
        yield external
        return
    if name == "moto":
        server = servers.start_moto(factory.mktemp("moto"))
    else:
        server = servers.start_seaweedfs(factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """moto_server for the whole session (state shared: use fresh buckets)."""
    yield from _session_server("moto", tmp_path_factory)


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SeaweedFS for the whole session (state shared: use fresh buckets)."""
    yield from _session_server("seaweedfs", tmp_path_factory)


@pytest.fixture(params=["moto", "seaweedfs"], ids=["moto", "seaweedfs"])
def s3_server(request: pytest.FixtureRequest) -> Server:
    """Each test once per server kind (session servers: do not stop them)."""
    fixture = "moto_server" if request.param == "moto" else "seaweed_server"
    server: Server = request.getfixturevalue(fixture)
    return server


def _fresh_server(name: servers.ServerName, factory: pytest.TempPathFactory) -> Iterator[Server]:
    start = servers.start_moto if name == "moto" else servers.start_seaweedfs
    server = start(factory.mktemp(f"fresh-{name}"))
    try:
        yield server
    finally:
        if server.alive():
            server.stop()


@pytest.fixture
def fresh_moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A moto of this test's own, to kill or restart (servers.restart_empty)."""
    yield from _fresh_server("moto", tmp_path_factory)


@pytest.fixture
def fresh_seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A SeaweedFS of this test's own (3-8 s to start), to kill or restart."""
    yield from _fresh_server("seaweedfs", tmp_path_factory)


@pytest.fixture(params=["moto", "seaweedfs"], ids=["moto", "seaweedfs"])
def fresh_s3_server(request: pytest.FixtureRequest) -> Server:
    fixture = "fresh_moto_server" if request.param == "moto" else "fresh_seaweed_server"
    server: Server = request.getfixturevalue(fixture)
    return server


@dataclass(frozen=True)
class Bucket:
    """A bucket of this test's own. `endpoint_url` is where eventbak and
    client() talk to: the server, or a proxy in front of it (`via`)."""

    server: Server
    name: str
    endpoint_url: str

    def url(self, prefix: str = "host1", **options: str | int) -> str:
        """An eventbak vault URL for this bucket: endpoint_url and region
        first, then `options` in the order given (storage_class=..., ...)."""
        query = {"endpoint_url": self.endpoint_url, "region": servers.TEST_REGION}
        query.update({k: str(v) for k, v in options.items()})
        encoded = urllib.parse.urlencode(query, safe=":/", quote_via=urllib.parse.quote)
        where = f"{self.name}/{prefix}" if prefix else self.name
        return f"s3://{where}?{encoded}"

    def client(self, **kwargs: Any) -> Any:
        """A boto3 S3 client on endpoint_url (no retries unless attempts=N)."""
        return servers.s3_client(self.endpoint_url, **kwargs)

    def via(self, endpoint_url: str) -> Bucket:
        """The same bucket reached through another endpoint (a FaultProxy)."""
        return replace(self, endpoint_url=endpoint_url.rstrip("/"))


def bucket_name(label: str = "") -> str:
    """A fresh valid S3 bucket name (lowercase, 3-63 chars), with a hint of
    the test's name for whoever reads a server's log."""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:30].strip("-")
    return "-".join(p for p in ("eb", slug, uuid.uuid4().hex[:12]) if p)


def _empty_and_delete(client: Any, bucket: str) -> None:
    with contextlib.suppress(Exception):
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for up in uploads:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    with contextlib.suppress(Exception):
        client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_bucket(s3_server: Server, request: pytest.FixtureRequest) -> Iterator[Bucket]:
    """A new empty bucket on s3_server; emptied and deleted afterwards (best
    effort: the test may have killed the server), since moto keeps objects in
    memory and SeaweedFS spends a volume per bucket."""
    name = bucket_name(request.node.name)
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield Bucket(s3_server, name, s3_server.endpoint_url)
    _empty_and_delete(client, name)
    client.close()


@pytest.fixture
def s3_proxy(s3_server: Server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of s3_server (use s3_bucket.via(proxy.endpoint_url))."""
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def moto_glacier(moto_server: Server) -> Iterator[tuple[str, Any]]:
    """(endpoint_url, boto3 Glacier client) on the session's moto server."""
    client = boto3.client(
        "glacier",
        endpoint_url=moto_server.endpoint_url,
        region_name=servers.TEST_REGION,
        aws_access_key_id=servers.TEST_KEY_ID,
        aws_secret_access_key=servers.TEST_SECRET,
    )
    yield moto_server.endpoint_url, client
    client.close()
