"""A fault-injecting HTTP reverse proxy for S3 tests.

Point boto3 (or eventbak) at `proxy.endpoint_url`; the proxy forwards every
request to the backend (moto, SeaweedFS) with its headers unchanged, Host
included (SigV4 signs the Host the client used, and SeaweedFS checks
signatures), streaming bodies both ways. It logs every request, and rules set
from the test turn a share of chosen requests into faults:

    with FaultProxy(server.endpoint_url) as proxy:
        proxy.slowdown(share=1.0, op="UploadPart")   # 503 SlowDown, not forwarded
        proxy.drop(share=0.3, seed=1)                # connection reset, no answer
        held = proxy.pause(op="CompleteMultipartUpload")  # hold until released
        ...
        assert proxy.count(op="UploadPart") == 3

Also a separate process: `python -m tests.faultproxy --backend URL --port 0
--ready-file F` writes its endpoint URL to F once listening (forwarding only,
or with --slowdown/--drop shares), and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypedDict, Unpack

_COPY = 1024 * 1024
#: Never forwarded: they describe one connection, not the request. Expect is
#: answered here (100 Continue) and the body sent on without waiting.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
BACKEND_TIMEOUT = 300.0

DropPhase = Literal["request", "response", "mid_response"]


def s3_operation(method: str, path: str, query: str) -> str:
    """The S3 API operation a path-style request is (best effort, by method,
    path depth and query keys): "UploadPart", "PutObject", "ListParts", ..."""
    keys = {k for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    segments = [s for s in path.split("/") if s]
    on_object = len(segments) >= 2
    if method == "PUT":
        if "uploadId" in keys and "partNumber" in keys:
            return "UploadPart"
        if on_object:
            return "PutObject"
        return "CreateBucket" if not keys else "PutBucket?" + "&".join(sorted(keys))
    if method == "POST":
        if "uploads" in keys:
            return "CreateMultipartUpload"
        if "uploadId" in keys:
            return "CompleteMultipartUpload"
        if "restore" in keys:
            return "RestoreObject"
        if "delete" in keys:
            return "DeleteObjects"
    if method == "GET":
        if not segments:
            return "ListBuckets"
        if "uploadId" in keys:
            return "ListParts"
        if "uploads" in keys:
            return "ListMultipartUploads"
        if on_object:
            return "GetObject"
        if "location" in keys:
            return "GetBucketLocation"
        return "ListObjectsV2" if "list-type" in keys else "ListObjects"
    if method == "HEAD":
        return "HeadObject" if on_object else "HeadBucket"
    if method == "DELETE":
        if "uploadId" in keys:
            return "AbortMultipartUpload"
        return "DeleteObject" if on_object else "DeleteBucket"
    return f"{method} {'object' if on_object else 'bucket'}"


@dataclass
class Request:
    """One request the proxy received. `status` is what the client got (None
    while in flight or when the connection was dropped before any answer);
    `fault` names the rule kind that acted on it, if any."""

    method: str
    path: str
    query: str
    op: str
    received: float
    fault: str | None = None
    status: int | None = None
    backend_status: int | None = None
    error: str | None = None

    def matches(
        self,
        method: str | None = None,
        query_contains: str | Iterable[str] | None = None,
        op: str | Iterable[str] | None = None,
        path_contains: str | None = None,
    ) -> bool:
        if method is not None and self.method != method.upper():
            return False
        if op is not None and self.op not in ({op} if isinstance(op, str) else set(op)):
            return False
        if path_contains is not None and path_contains not in self.path:
            return False
        if query_contains is not None:
            wanted = [query_contains] if isinstance(query_contains, str) else list(query_contains)
            if not all(w in self.query for w in wanted):
                return False
        return True


class Match(TypedDict, total=False):
    """Which requests a rule matches (the keywords of every rule method)."""

    method: str | None
    op: str | tuple[str, ...] | None
    query_contains: str | tuple[str, ...] | None
    path_contains: str | None
    skip: int
    limit: int | None


@dataclass
class Rule:
    """A fault rule. Of the requests it matches, it lets the first `skip`
    through, then acts on a `share` of them (drawn from its own seeded random
    stream, in arrival order), at most `limit` times."""

    kind: Literal["error", "drop", "pause", "hook"]
    share: float = 1.0
    seed: int = 0
    method: str | None = None
    op: str | tuple[str, ...] | None = None
    query_contains: str | tuple[str, ...] | None = None
    path_contains: str | None = None
    skip: int = 0
    limit: int | None = None
    # error
    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."
    # drop
    phase: DropPhase = "request"
    # hook
    callback: Callable[[Request], object] | None = None
    #: How many requests it matched / acted on so far.
    seen: int = 0
    fired: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _released: threading.Event = field(init=False, repr=False, default_factory=threading.Event)
    _cond: threading.Condition = field(init=False, repr=False, default_factory=threading.Condition)
    _held: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share {self.share} is not within 0..1")
        self._rng = random.Random(self.seed)

    def _decide(self, req: Request) -> bool:
        """Called under the proxy's lock, once per request, in arrival order."""
        if not req.matches(self.method, self.query_contains, self.op, self.path_contains):
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.limit is not None and self.fired >= self.limit:
            return False
        # Always draw, so a rule's choices depend only on its seed and the
        # order of the requests it matches, not on its share.
        hit = self._rng.random() < self.share
        if hit:
            self.fired += 1
        return hit

    # pause rules

    @property
    def held(self) -> int:
        """How many requests this pause rule is holding right now."""
        with self._cond:
            return self._held

    def wait_held(self, n: int = 1, timeout: float = 30.0) -> None:
        """Block until at least n requests are being held (TimeoutError if not)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._held < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._held} requests held, wanted {n}")
                self._cond.wait(left)

    def release(self) -> None:
        """Let held requests (and later matches) go on to the backend."""
        self._released.set()

    def _hold(self, timeout: float) -> None:
        with self._cond:
            self._held += 1
            self._cond.notify_all()
        try:
            self._released.wait(timeout)
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()


def _error_body(code: str, message: str, path: str) -> bytes:
    rid = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{path}</Resource><RequestId>{rid}</RequestId></Error>"
    ).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1: keep-alive for boto3's pooled connections, and 100 Continue
    # answered for its `Expect: 100-continue` uploads (else it waits 1 s).
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    # ---- request body

    def _body_chunks(self) -> Iterable[bytes]:
        """The request body as it came on the wire, in pieces: Content-Length
        bytes, or the raw chunked encoding (chunk lines, trailers and all)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed mid-body")
                yield line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline(65537)
                        if not trailer:
                            raise ConnectionError("client closed in trailers")
                        yield trailer
                        if trailer in (b"\r\n", b"\n"):
                            return
                left = size + 2  # the data and its CRLF
                while left:
                    piece = self.rfile.read(min(left, _COPY))
                    if not piece:
                        raise ConnectionError("client closed mid-chunk")
                    left -= len(piece)
                    yield piece
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            piece = self.rfile.read(min(left, _COPY))
            if not piece:
                raise ConnectionError("client closed mid-body")
            left -= len(piece)
            yield piece

    def _drain(self) -> None:
        for _ in self._body_chunks():
            pass

    # ---- answers

    def _abort(self) -> None:
        """Drop the connection: RST, no answer (or no rest of the answer)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.mark_aborted(self.connection)

    def _send_error_xml(self, rule: Rule) -> None:
        body = b"" if self.command == "HEAD" else _error_body(rule.code, rule.message, self.path)
        self.send_response_only(rule.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", uuid.uuid4().hex[:16].upper())
        self.end_headers()
        if body:
            self.wfile.write(body)

    # ---- forwarding

    def _handle(self) -> None:
        proxy = self.server.proxy
        parts = urllib.parse.urlsplit(self.path)
        req = Request(
            method=self.command,
            path=parts.path,
            query=parts.query,
            op=s3_operation(self.command, parts.path, parts.query),
            received=time.monotonic(),
        )
        hooks, fault = proxy._admit(req)
        try:
            for hook in hooks:
                if hook.kind == "pause":
                    hook._hold(proxy.pause_timeout)
                elif hook.callback is not None:
                    hook.callback(req)
            if fault is not None and fault.kind == "error":
                req.fault = "error"
                self._drain()
                self._send_error_xml(fault)
                req.status = fault.status
                return
            if fault is not None and fault.phase == "request":
                req.fault = "drop"
                self._drain()
                self._abort()
                return
            self._forward(req, fault)
        except Exception as exc:  # a test's hook too: the client sees a reset, the log why
            req.error = f"{type(exc).__name__}: {exc}"
            self._abort()

    def _forward(self, req: Request, fault: Rule | None) -> None:
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(
            proxy.backend_host, proxy.backend_port, timeout=BACKEND_TIMEOUT
        )
        try:
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        conn.putheader(key, value)
                conn.endheaders()
                for piece in self._body_chunks():
                    conn.send(piece)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                # The backend is down or died mid-request: the client sees its
                # connection drop, as it would talking to the server itself.
                req.error = f"backend: {type(exc).__name__}: {exc}"
                self._drain_quietly()
                self._abort()
                return
            req.backend_status = resp.status
            if fault is not None and fault.phase == "response":
                req.fault = "drop"
                self._abort()
                return
            self._relay(req, resp, mid_response=fault is not None)
        finally:
            conn.close()

    def _drain_quietly(self) -> None:
        with contextlib.suppress(OSError, ValueError, ConnectionError):
            self._drain()

    def _relay(self, req: Request, resp: http.client.HTTPResponse, *, mid_response: bool) -> None:
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        chunked = any(
            k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers
        )
        headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        head = [f"HTTP/1.1 {resp.status} {resp.reason}\r\n".encode("latin-1")]
        head += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers]
        if chunked and not no_body:
            head.append(b"Transfer-Encoding: chunked\r\n")
        elif length is None and not no_body:
            # Neither length nor chunks: the body ends when the connection does.
            head.append(b"Connection: close\r\n")
            self.close_connection = True
        head.append(b"\r\n")
        head_bytes = b"".join(head)
        if mid_response:
            req.fault = "drop"
            if no_body or length == "0":
                self.wfile.write(head_bytes[: len(head_bytes) // 2])
            else:
                self.wfile.write(head_bytes)
                self.wfile.write(resp.read(max(1, int(length or 2) // 2)))
            self._abort()
            return
        self.wfile.write(head_bytes)
        req.status = resp.status
        if no_body:
            return
        while True:
            piece = resp.read1(_COPY) if chunked else resp.read(_COPY)
            if not piece:
                break
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # close() must not wait for handler threads parked on idle keep-alive
    # connections; it shuts those connections down instead.
    block_on_close = False

    def __init__(self, addr: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._aborted: set[socket.socket] = set()
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own server_bind looks up the host's FQDN (DNS, slow
        # on some machines) only to name itself.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host if isinstance(host, str) else host.decode()
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def mark_aborted(self, sock: socket.socket) -> None:
        with self._lock:
            self._aborted.add(sock)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
            aborted = request in self._aborted
            self._aborted.discard(request)
        if aborted:
            # No FIN first: close with SO_LINGER 0 sends a bare RST.
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def close_all(self) -> None:
        with self._lock:
            conns = list(self._open)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class FaultProxy:
    """See the module docstring. Thread-safe; rules may change while requests
    are in flight (each request is judged once, on arrival)."""

    def __init__(self, backend_url: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        parts = urllib.parse.urlsplit(backend_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"backend {backend_url!r}: only http://host:port backends")
        self.backend_url = backend_url.rstrip("/")
        self.backend_host = parts.hostname
        self.backend_port = parts.port or 80
        self.pause_timeout = 600.0
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._log: list[Request] = []
        self._server = _Server((host, port), self)
        self.host: str = self._server.server_name
        self.port: int = self._server.server_port
        self.endpoint_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"faultproxy:{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    # ---- lifecycle

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.clear()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_all()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- rules

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def error(
        self,
        status: int,
        code: str,
        message: str,
        share: float = 1.0,
        *,
        seed: int = 0,
        **match: Unpack[Match],
    ) -> Rule:
        """Answer a share of matching requests with an S3 XML error, without
        forwarding them (the request body is read and discarded first)."""
        return self._add(
            Rule("error", share, seed, status=status, code=code, message=message, **match)
        )

    def slowdown(self, share: float = 0.2, *, seed: int = 0, **match: Unpack[Match]) -> Rule:
        """503 SlowDown for a share of matching requests (not forwarded)."""
        return self._add(Rule("error", share, seed, **match))

    def drop(
        self,
        share: float = 0.2,
        *,
        phase: DropPhase = "request",
        seed: int = 0,
        **match: Unpack[Match],
    ) -> Rule:
        """Reset the client's connection for a share of matching requests.
        phase "request": after reading the request, not forwarded; "response":
        forwarded (the backend acts on it) but no answer at all; "mid_response":
        forwarded, then half the answer (half the headers if it has no body)."""
        return self._add(Rule("drop", share, seed, phase=phase, **match))

    def pause(self, **match: Unpack[Match]) -> Rule:
        """Hold matching requests (before reading their body) until
        `rule.release()`, clear() or close(); `rule.wait_held(n)` waits until n
        are held. For "kill it while a request is in flight"."""
        return self._add(Rule("pause", **match))

    def on_request(self, callback: Callable[[Request], object], **match: Unpack[Match]) -> Rule:
        """Call callback(request) in the proxy's thread before a matching
        request is forwarded (e.g. to restart the backend at the third part)."""
        return self._add(Rule("hook", callback=callback, **match))

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)
        rule.release()

    def clear(self) -> None:
        """Remove every rule (and let paused requests go on)."""
        with self._lock:
            rules, self._rules = self._rules, []
        for rule in rules:
            rule.release()

    def _admit(self, req: Request) -> tuple[list[Rule], Rule | None]:
        """Log the request; the pause/hook rules and the (first) fault rule
        that act on it."""
        hooks: list[Rule] = []
        fault: Rule | None = None
        with self._lock:
            self._log.append(req)
            for rule in self._rules:
                if rule.kind in ("pause", "hook"):
                    if rule._decide(req):
                        hooks.append(rule)
                elif fault is None and rule._decide(req):
                    fault = rule
        return hooks, fault

    # ---- the log

    @property
    def requests(self) -> list[Request]:
        """A snapshot of the log, in arrival order."""
        with self._lock:
            return list(self._log)

    def count(
        self,
        method: str | None = None,
        query_contains: str | Iterable[str] | None = None,
        *,
        op: str | Iterable[str] | None = None,
        path_contains: str | None = None,
        fault: str | Literal["any"] | None = "any",
    ) -> int:
        """Requests received that match (all given filters). fault="any"
        counts all; None only those passed through; "error"/"drop" only those."""
        n = 0
        for req in self.requests:
            if req.matches(method, query_contains, op, path_contains) and (
                fault == "any" or req.fault == fault
            ):
                n += 1
        return n

    def ops(self) -> list[str]:
        return [r.op for r in self.requests]

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faultproxy")
    parser.add_argument("--backend", required=True, help="http://host:port")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, help="gets the proxy's URL once listening")
    parser.add_argument("--slowdown", type=float, default=0.0, help="share of 503 SlowDown")
    parser.add_argument("--drop", type=float, default=0.0, help="share of dropped connections")
    parser.add_argument("--op", help="only fault this S3 operation (e.g. UploadPart)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with FaultProxy(args.backend, port=args.port) as proxy:
        if args.slowdown:
            proxy.slowdown(args.slowdown, seed=args.seed, op=args.op)
        if args.drop:
            proxy.drop(args.drop, seed=args.seed + 1, op=args.op)
        if args.ready_file:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(proxy.endpoint_url + "\n")
            tmp.replace(args.ready_file)  # readers never see half a URL
        print(f"faultproxy {proxy.endpoint_url} -> {proxy.backend_url}", file=sys.stderr)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
