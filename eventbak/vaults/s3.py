"""The S3 vault: a bucket and prefix on AWS S3 or an S3-compatible store,
`s3://BUCKET/PREFIX?storage_class=DEEP_ARCHIVE&endpoint_url=...&region=...`.

Keys: every key the steps take and return is relative to the vault
(`archives/<session>/<archive><suffix>`, `eventbak.json`, `catalog/...`); the
object's S3 key is `<prefix>/<key>`. Archives go to the vault's storage
class; small objects (catalogs, eventbak.json) always to STANDARD, so that
listing and planning never need a thaw.

Checksums: every upload carries our own SHA-256 (`ChecksumSHA256`, base64),
which S3 verifies before it stores anything (BadDigest otherwise). The
client is told to add no checksums of its own (`when_required`), so no
CRC32 trailers or aws-chunked bodies reach servers that do not speak them.
What the servers report (moto and SeaweedFS measured with boto3 1.44; AWS
as its documentation says):

* AWS: PutObject and UploadPart echo the verified `ChecksumSHA256`;
  ListParts gives each part's; CompleteMultipartUpload and HeadObject
  (`ChecksumMode=ENABLED`) give the composite `base64(sha256(d1 || d2 ...))-N`
  of a multipart object, where d1... are the parts' raw digests.
* SeaweedFS 4.48: the same as AWS (it verifies, refusing a wrong checksum
  with BadDigest), except that ListParts gives no part checksums.
* moto 5.2.5: verifies nothing; echoes the checksum on PutObject and
  UploadPart only when `ChecksumAlgorithm` is sent too (so we always send
  both); ListParts and CompleteMultipartUpload give none; HeadObject gives
  a multipart object's composite *without* the `-N`, which `head` restores
  from the ETag's `-N` (the part count of every multipart ETag), so that one
  comparison works everywhere.

Cold storage: GLACIER and DEEP_ARCHIVE objects are "frozen" until a
RestoreObject makes a readable copy; HeadObject's `Restore` header says
`ongoing-request="true"` while it runs and gives the expiry after. moto
restores instantly. SeaweedFS stores the class but has no thaw: its objects
are readable at once and RestoreObject answers 405 MethodNotAllowed; after
that answer this vault reports such objects as readable.

Errors: every call goes through one translation (`_call`, `_client_error`,
`_boto_error`): refusals (missing bucket, access denied, refused
credentials, a storage class the store does not take) are `VaultRefused`;
no answer, or errors that outlast botocore's retries (5xx, throttling,
dropped connections) are `VaultUnreachable`; a multipart upload id the
store no longer knows is `UploadGone` (moto answers a part or a complete
for an aborted upload with 500s instead: one ListParts then tells). Each
is one line naming the vault and the key; credentials (boto3's standard
chain only) never appear, nor the store's own text for refused credentials
(AWS's signature errors quote what was signed).

Threads: one client, made on first use and shared by every worker thread
(boto3 clients are thread-safe; sessions are not).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore import exceptions as bce
from botocore import xform_name
from botocore.config import Config

from eventbak.errors import UploadGone, VaultError, VaultRefused, VaultUnreachable
from eventbak.vaults.base import Held, Part, Receipt, ThawState, Tier, Unfinished
from eventbak.vaults.url import FROZEN_CLASSES, VaultSpec

MIB = 1024 * 1024
#: Attempts per request, the first included (botocore's standard retry mode).
#: With its jittered backoff (up to 50 ms x 2^i after errors, 1 s x 2^i after
#: throttling, 20 s at most) eight attempts give up on a refused connection
#: within 6.4 s (3 s on average) and wait out up to about a minute of SlowDown.
MAX_ATTEMPTS = 8
CONNECT_TIMEOUT = 10
#: Per socket operation; generous because CompleteMultipartUpload of many
#: parts can take a while before AWS answers.
READ_TIMEOUT = 120
_STREAM_BUFFER = MIB

_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "InvalidClientTokenId",
})  # fmt: skip
# The bucket lives in another region than the URL says (AWS names both).
_REGION_CODES = frozenset({"AuthorizationHeaderMalformed", "PermanentRedirect"})
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
_DIGEST_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
# botocore's standard mode retries these; reaching us, they outlasted the retries.
_RETRIED_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "RequestThrottled", "TooManyRequestsException", "ServiceUnavailable", "InternalError",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
})  # fmt: skip
# RestoreObject answers for an object that needs no thaw.
_NO_THAW_NEEDED = frozenset({"InvalidObjectState", "ObjectAlreadyInActiveTierError"})
_ONGOING = re.compile(r'ongoing-request\s*=\s*"(true|false)"')


class _Missing(VaultError):
    """Nothing under the key (404): the steps that can say "absent" catch it."""


class _ServerFailing(VaultUnreachable):
    """The store answered 5xx (or throttled) until botocore gave up."""


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _etag_parts(etag: str | None) -> int:
    """The part count in a multipart object's ETag (`"<md5 of md5s>-N"`), else 0."""
    _, dash, count = (etag or "").strip('"').rpartition("-")
    return int(count) if dash and count.isdigit() else 0


def _reported_checksum(checksum: str | None, etag: str | None) -> str:
    """A checksum as AWS reports it: moto drops the composite's `-N` (base64
    has no "-", so its absence is unambiguous)."""
    if not checksum:
        return ""
    parts = _etag_parts(etag)
    if parts and "-" not in checksum:
        return f"{checksum}-{parts}"
    return checksum


def _error_fields(exc: Any) -> tuple[str, int, str]:
    """(code, HTTP status, first line of the message) of a ClientError."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    lines = str(error.get("Message", "")).strip().splitlines()
    return code, status, lines[0][:200] if lines else ""


class _Body(io.RawIOBase):
    """GetObject's streaming body as a raw stream, read errors translated."""

    def __init__(self, vault: S3Vault, key: str, body: Any) -> None:
        super().__init__()
        self._vault = vault
        self._key = key
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data: bytes = self._body.read(len(view))
        except bce.BotoCoreError as exc:
            raise self._vault._boto_error(exc, "GetObject", self._key) from None
        n = len(data)
        view[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Vault:
    local_root: Path | None = None  # remote: no directory here to keep out of backups
    #: Entries per ListParts / ListMultipartUploads page; None: the store's
    #: default (1,000 on AWS). Tests set it small to walk the pages.
    list_page: int | None = None

    def __init__(self, spec: VaultSpec, *, max_attempts: int = MAX_ATTEMPTS) -> None:
        if spec.kind != "s3":
            raise ValueError(f"not an s3:// vault: {spec.url}")
        self.spec = spec
        self.url = spec.url
        self.ref = spec.ref
        self.bucket = spec.bucket
        self.part_size: int | None = spec.part_size
        self.concurrency = spec.concurrency
        self.storage_class = spec.storage_class
        self._prefix = f"{spec.prefix}/" if spec.prefix else ""
        self._max_attempts = max_attempts
        self._config = Config(
            # "standard", not "adaptive": adaptive adds a client-side rate limiter
            # (still marked experimental) that, shared by all our threads, would
            # slow every part after one SlowDown; standard's jittered backoff and
            # retry quota are enough for at most 64 parts in flight.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            # the parts in flight plus heads, lists and small objects alongside
            max_pool_connections=spec.concurrency + 4,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            tcp_keepalive=True,
            # S3-compatible stores rarely resolve bucket.host names
            s3={"addressing_style": "path"} if spec.endpoint_url else None,
            # we send our own SHA-256; nothing else should be added or demanded
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # Made on first use: making a client resolves the credential chain,
        # which may ask an instance-metadata endpoint (network).
        self._client_lock = threading.Lock()
        self._buffers_lock = threading.Lock()
        self._buffers: list[bytearray] = []
        self._client_obj: Any = None
        # Set when the store answered RestoreObject with "not implemented"
        # (SeaweedFS): its cold classes are labels, readable at once.
        self._no_thaw = False

    def __repr__(self) -> str:
        return f"S3Vault({self.ref})"

    # -- plumbing -----------------------------------------------------------

    @property
    def _client(self) -> Any:
        client = self._client_obj
        if client is not None:
            return client
        with self._client_lock:
            if self._client_obj is None:
                try:
                    self._client_obj = boto3.session.Session().client(
                        "s3",
                        endpoint_url=self.spec.endpoint_url,
                        region_name=self.spec.region,
                        config=self._config,
                    )
                except bce.BotoCoreError as exc:
                    raise self._boto_error(exc, "connecting", "") from None
            return self._client_obj

    def _object(self, key: str) -> str:
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise VaultError(f"vault {self.ref}: bad key {key!r}")
        return self._prefix + key

    def _endpoint(self) -> str:
        return self.spec.endpoint_url or f"S3 in {self.spec.region or 'the default region'}"

    def _where(self, op: str, key: str) -> str:
        return f"vault {self.ref}: {op} {key}" if key else f"vault {self.ref}: {op}"

    def _client_error(self, exc: Any, op: str, key: str) -> VaultError:
        """The one-line error for an answer the store gave (a ClientError)."""
        code, status, message = _error_fields(exc)
        where = self._where(op, key)
        if code in _CREDENTIAL_CODES:
            return VaultRefused(f"{where}: the credentials were refused ({code})")
        if code == "RequestTimeTooSkewed":
            return VaultRefused(f"{where}: the request time was refused: set this machine's clock")
        if code in _REGION_CODES:
            return VaultRefused(f"{where}: wrong region for bucket {self.bucket} ({message})")
        if code == "NoSuchBucket":
            return VaultRefused(f"{where}: bucket {self.bucket} does not exist")
        if code == "InvalidObjectState":
            return VaultError(
                f"{where}: the archive is in cold storage and must be thawed first "
                "(request a thaw, then wait until it is ready)"
            )
        if code in _DENIED_CODES or status == 403:
            return VaultRefused(
                f"{where}: access denied to bucket {self.bucket} "
                "(check credentials and the IAM policy in docs/vaults.md)"
            )
        if code == "InvalidStorageClass":
            return VaultRefused(
                f"{where}: the store does not accept storage class {self.storage_class}"
            )
        if code == "NoSuchUpload":
            return UploadGone(
                f"{where}: the multipart upload is gone (completed, aborted or expired)"
            )
        if code == "NoSuchKey" or status == 404:
            return _Missing(f"{where}: {key or 'the object'} is missing")
        if code in _DIGEST_CODES:
            return VaultError(
                f"{where}: the store refused the bytes as not matching their SHA-256 ({code}): "
                "the staged file may have changed"
            )
        if code in _RETRIED_CODES or status >= 500:
            detail = f"{code or status}: {message}" if message else str(code or status)
            return _ServerFailing(
                f"{where}: {self._endpoint()} kept failing ({detail}) "
                f"after {self._max_attempts} attempts"
            )
        detail = f"{code}: {message}" if message else (code or f"HTTP {status}")
        return VaultError(f"{where}: {detail}")

    def _boto_error(self, exc: Exception, op: str, key: str) -> VaultError:
        """The one-line error for a failure before or without an answer."""
        if isinstance(exc, bce.ParamValidationError):
            raise exc  # our bug, not the user's: keep the traceback
        where = self._where(op, key)
        if isinstance(exc, bce.NoCredentialsError):
            return VaultRefused(
                f"{where}: no AWS credentials found (env, AWS_PROFILE or an instance role)"
            )
        if isinstance(exc, bce.CredentialRetrievalError):
            # its text may quote a credential process's output: name the provider only
            provider = getattr(exc, "kwargs", {}).get("provider", "a provider")
            return VaultRefused(f"{where}: the AWS credentials from {provider} cannot be loaded")
        if isinstance(exc, bce.PartialCredentialsError | bce.ProfileNotFound):
            return VaultRefused(f"{where}: {exc}")  # names a variable or profile, no values
        if isinstance(exc, bce.ConnectionError | bce.HTTPClientError | bce.IncompleteReadError):
            return VaultUnreachable(f"{where}: cannot reach {self._endpoint()}: {exc}")
        return VaultError(f"{where}: {exc}")

    def _send(self, op: str, key: str, **params: Any) -> dict[str, Any]:
        """Call S3 operation `op` on the bucket; an answer that is an error
        stays a ClientError (for the steps that look at its code)."""
        try:
            answer: dict[str, Any] = getattr(self._client, xform_name(op))(
                Bucket=self.bucket, **params
            )
        except bce.BotoCoreError as exc:
            raise self._boto_error(exc, op, key) from None
        return answer

    def _call(self, op: str, key: str, **params: Any) -> dict[str, Any]:
        try:
            return self._send(op, key, **params)
        except bce.ClientError as exc:
            raise self._client_error(exc, op, key) from None

    # -- setting up ---------------------------------------------------------

    def prepare(self) -> None:
        """Checks the bucket exists and answers us; never creates one (a
        missing bucket is the user's to make, with its region and policy).
        Whether the storage class is accepted shows only on the first write."""
        try:
            self._send("HeadBucket", "")
        except bce.ClientError as exc:
            code, status, _ = _error_fields(exc)
            if code == "NoSuchBucket" or status == 404:
                raise VaultRefused(
                    f"vault {self.ref}: bucket {self.bucket} does not exist"
                ) from None
            if status in (400, 403):
                # A HEAD answer has no body, so it cannot say which refusal
                # (bad key, bad signature, policy): a GET's error can.
                self._call("ListObjectsV2", "", MaxKeys=1, Prefix=self._prefix)
            raise self._client_error(exc, "HeadBucket", "") from None

    def key_for(self, session: str, archive: str, suffix: str) -> str:
        return f"archives/{session}/{archive}{suffix}"

    def expected_checksum(self, sha256: str, parts: list[Part]) -> str:
        if not parts:
            return _b64(bytes.fromhex(sha256))
        if not all(p.checksum for p in parts):
            return ""  # parts known by size only (ListParts on moto, SeaweedFS)
        ordered = sorted(parts, key=lambda p: p.number)
        joined = b"".join(base64.b64decode(p.checksum) for p in ordered)
        return f"{_b64(hashlib.sha256(joined).digest())}-{len(ordered)}"

    # -- one part -----------------------------------------------------------

    def put(self, key: str, source: Path, size: int, sha256: str) -> Receipt:
        sent = _b64(bytes.fromhex(sha256))
        try:
            with open(source, "rb") as f:
                held = f.seek(0, io.SEEK_END)
                f.seek(0)
                if held != size:
                    raise VaultError(f"staged {source} holds {held} bytes, not the {size} sealed")
                # A file object, not its bytes: botocore streams it (and seeks
                # back to retry); the whole archive is never in memory.
                answer = self._call(
                    "PutObject", key, Key=self._object(key), Body=f, ContentLength=size,
                    ChecksumAlgorithm="SHA256", ChecksumSHA256=sent,
                    StorageClass=self.storage_class,
                )  # fmt: skip
        except OSError as exc:  # the staged file, as botocore reads it too
            raise VaultError(f"cannot read staged {source}: {exc.strerror or exc}") from None
        # AWS and SeaweedFS return the checksum they verified, moto the one we
        # sent; a store that returns none accepted the request carrying ours.
        got = answer.get("ChecksumSHA256") or sent
        if got != sent:
            raise VaultError(
                f"{self._where('PutObject', key)}: the store reports SHA-256 {got}, we sent {sent}"
            )
        return Receipt(key, size, got, self.storage_class)

    # -- multipart ----------------------------------------------------------

    def begin(self, key: str) -> str:
        answer = self._call(
            "CreateMultipartUpload", key, Key=self._object(key),
            ChecksumAlgorithm="SHA256", StorageClass=self.storage_class,
        )  # fmt: skip
        return str(answer["UploadId"])

    def send_part(
        self, key: str, upload_id: str, number: int, source: Path, offset: int, length: int
    ) -> Part:
        # In memory (one part per thread): the digest has to be known before
        # the request starts, and a retry resends the same bytes.
        data = self._take_buffer(length)
        try:
            return self._send_part(key, upload_id, number, source, offset, length, data)
        finally:
            self._give_back(data)

    def _take_buffer(self, length: int) -> bytearray:
        """A part buffer, reused: a fresh 16 MiB bytearray per part makes glibc
        keep freed ones in per-thread arenas (its mmap threshold grows after
        the first free), so RSS grew with the number of threads that ever sent
        a part. At most `concurrency` buffers are kept."""
        with self._buffers_lock:
            for i, buf in enumerate(self._buffers):
                if len(buf) == length:
                    return self._buffers.pop(i)
        return bytearray(length)

    def _give_back(self, buf: bytearray) -> None:
        with self._buffers_lock:
            if len(self._buffers) < self.concurrency:
                self._buffers.append(buf)

    def _send_part(
        self, key: str, upload_id: str, number: int, source: Path, offset: int, length: int,
        data: bytearray,
    ) -> Part:  # fmt: skip
        view = memoryview(data)
        try:
            with open(source, "rb", buffering=0) as f:
                f.seek(offset)
                got = 0
                while got < length:
                    n = f.readinto(view[got:])
                    if not n:
                        raise VaultError(
                            f"staged {source} ends at byte {offset + got}, inside part {number}"
                        )
                    got += n
        except OSError as exc:
            raise VaultError(f"cannot read staged {source}: {exc.strerror or exc}") from None
        sent = _b64(hashlib.sha256(data).digest())
        try:
            answer = self._call(
                "UploadPart", key, Key=self._object(key), UploadId=upload_id, PartNumber=number,
                Body=data, ContentLength=length, ChecksumAlgorithm="SHA256", ChecksumSHA256=sent,
            )  # fmt: skip
        except _ServerFailing:
            self._raise_if_gone("UploadPart", key, upload_id)
            raise
        confirmed = answer.get("ChecksumSHA256") or sent
        if confirmed != sent:
            raise VaultError(
                f"{self._where('UploadPart', key)}: part {number}: the store reports "
                f"SHA-256 {confirmed}, we sent {sent}"
            )
        return Part(number, length, confirmed, str(answer.get("ETag", "")))

    def _raise_if_gone(self, op: str, key: str, upload_id: str) -> None:
        """UploadGone if the upload id is unknown. moto answers a part or a
        complete for an aborted upload with 500s, not NoSuchUpload, and any
        store might fail so once it lost an upload: one ListParts tells."""
        if self.list_parts(key, upload_id) is None:
            raise UploadGone(f"{self._where(op, key)}: the multipart upload is gone") from None

    def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        found: dict[int, Part] = {}
        marker = 0
        while True:
            page: dict[str, int] = {"PartNumberMarker": marker} if marker else {}
            if self.list_page:
                page["MaxParts"] = self.list_page
            try:
                answer = self._call(
                    "ListParts", key, Key=self._object(key), UploadId=upload_id, **page
                )
            except (UploadGone, _Missing):
                return None
            for p in answer.get("Parts", []):
                number = int(p["PartNumber"])
                found[number] = Part(
                    number, int(p["Size"]), str(p.get("ChecksumSHA256", "")),
                    str(p.get("ETag", "")),
                )  # fmt: skip
            if not answer.get("IsTruncated"):
                break
            following = int(answer.get("NextPartNumberMarker") or max(found, default=0))
            if following <= marker:
                raise VaultError(f"{self._where('ListParts', key)}: the listing does not advance")
            marker = following
        return [found[n] for n in sorted(found)]

    def complete(
        self, key: str, upload_id: str, parts: list[Part], size: int, sha256: str
    ) -> Receipt:
        ordered = sorted(parts, key=lambda p: p.number)
        listed: list[dict[str, Any]] = []
        for p in ordered:
            entry: dict[str, Any] = {"PartNumber": p.number, "ETag": p.etag}
            if p.checksum:
                entry["ChecksumSHA256"] = p.checksum
            listed.append(entry)
        try:
            answer = self._call(
                "CompleteMultipartUpload", key, Key=self._object(key), UploadId=upload_id,
                MultipartUpload={"Parts": listed},
            )  # fmt: skip
        except _ServerFailing:
            self._raise_if_gone("CompleteMultipartUpload", key, upload_id)
            raise
        # The answer has no size (and on moto no checksum): one HEAD tells both.
        held = self.head(key)
        where = self._where("CompleteMultipartUpload", key)
        if held is None:
            raise VaultError(f"{where}: completed, but nothing is stored under the key")
        if held.size != size:
            raise VaultError(f"{where}: the object holds {held.size} bytes, not {size}")
        checksum = (
            _reported_checksum(answer.get("ChecksumSHA256"), answer.get("ETag")) or held.checksum
        )
        want = self.expected_checksum(sha256, ordered)
        if want and checksum and checksum != want:
            raise VaultError(f"{where}: the store reports checksum {checksum}, expected {want}")
        return Receipt(key, held.size, checksum, held.storage_class)

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self._call("AbortMultipartUpload", key, Key=self._object(key), UploadId=upload_id)
        except (UploadGone, _Missing):
            return  # already gone: what abort is for

    def unfinished(self, sessions: set[str]) -> list[Unfinished]:
        under = self._prefix + "archives/"
        found: list[Unfinished] = []
        markers: dict[str, str] = {}
        size = {"MaxUploads": self.list_page} if self.list_page else {}
        while True:
            answer = self._call(
                "ListMultipartUploads", "archives/", Prefix=under, **markers, **size
            )
            for upload in answer.get("Uploads", []):
                name = str(upload.get("Key", ""))
                if not name.startswith(under):
                    continue
                key = name[len(self._prefix) :]
                fields = key.split("/", 2)
                if len(fields) == 3 and fields[1] in sessions:
                    found.append(Unfinished(key, str(upload["UploadId"])))
            if not answer.get("IsTruncated"):
                break
            # SeaweedFS 4.48 gives no NextKeyMarker (and its next page is
            # empty: it pages by upload id); its pages hold 10,000 by default.
            last = (answer.get("Uploads") or [{}])[-1]
            following = {
                "KeyMarker": str(answer.get("NextKeyMarker") or last.get("Key") or ""),
                "UploadIdMarker": str(
                    answer.get("NextUploadIdMarker") or last.get("UploadId") or ""
                ),
            }
            if not following["KeyMarker"] or following == markers:
                raise VaultError(
                    f"{self._where('ListMultipartUploads', 'archives/')}: the listing does not "
                    "advance"
                )
            markers = following
        return found

    # -- reading and small objects -----------------------------------------

    def head(self, key: str) -> Held | None:
        try:
            answer = self._call("HeadObject", key, Key=self._object(key), ChecksumMode="ENABLED")
        except _Missing:
            return None
        storage_class = str(answer.get("StorageClass") or "STANDARD")  # absent: STANDARD
        return Held(
            int(answer.get("ContentLength", 0)),
            _reported_checksum(answer.get("ChecksumSHA256"), answer.get("ETag")),
            storage_class,
            self._thaw_state(storage_class, answer.get("Restore")),
        )

    def _thaw_state(self, storage_class: str, restore: str | None) -> ThawState:
        if storage_class not in FROZEN_CLASSES:
            return "readable"
        ongoing = _ONGOING.search(restore or "")
        if ongoing is None:
            return "readable" if self._no_thaw else "frozen"
        return "thawing" if ongoing.group(1) == "true" else "thawed"

    def put_small(self, key: str, data: bytes) -> Receipt:
        sent = _b64(hashlib.sha256(data).digest())
        answer = self._call(
            "PutObject", key, Key=self._object(key), Body=data, ContentLength=len(data),
            ChecksumAlgorithm="SHA256", ChecksumSHA256=sent, StorageClass="STANDARD",
        )  # fmt: skip
        got = answer.get("ChecksumSHA256") or sent
        if got != sent:
            raise VaultError(
                f"{self._where('PutObject', key)}: the store reports SHA-256 {got}, we sent {sent}"
            )
        return Receipt(key, len(data), got, "STANDARD")

    def get_small(self, key: str) -> bytes | None:
        try:
            answer = self._call("GetObject", key, Key=self._object(key))
        except _Missing:
            return None
        with io.BufferedReader(_Body(self, key, answer["Body"])) as body:
            return body.read()

    def list_small(self, prefix: str) -> list[str]:
        under = self._prefix + prefix
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            answer = self._call("ListObjectsV2", prefix, Prefix=under, **token)
            for obj in answer.get("Contents", []):
                name = str(obj.get("Key", ""))
                if name.startswith(under):
                    keys.append(name[len(self._prefix) :])
            nxt = answer.get("NextContinuationToken")
            if not answer.get("IsTruncated") or not nxt:
                break
            token = {"ContinuationToken": str(nxt)}
        return sorted(keys)

    def request_thaw(self, key: str, tier: Tier, days: int) -> None:
        if tier == "Expedited":
            held = self.head(key)
            if held is not None and held.storage_class == "DEEP_ARCHIVE":
                raise VaultRefused(
                    f"vault {self.ref}: {key} is in DEEP_ARCHIVE, which thaws with the "
                    "Standard or Bulk tier only (not Expedited)"
                )
        request = {"Days": days, "GlacierJobParameters": {"Tier": tier}}
        try:
            self._send("RestoreObject", key, Key=self._object(key), RestoreRequest=request)
        except bce.ClientError as exc:
            code, status, _ = _error_fields(exc)
            if code == "RestoreAlreadyInProgress" or code in _NO_THAW_NEEDED:
                return
            if code in ("MethodNotAllowed", "NotImplemented") or status in (405, 501):
                self._no_thaw = True  # SeaweedFS: nothing freezes there
                return
            raise self._client_error(exc, "RestoreObject", key) from None

    def open(self, key: str) -> BinaryIO:
        try:
            answer = self._call("GetObject", key, Key=self._object(key))
        except _Missing:
            raise VaultError(f"vault {self.ref}: archive {key} is missing") from None
        return io.BufferedReader(_Body(self, key, answer["Body"]), buffer_size=_STREAM_BUFFER)

    def close(self) -> None:
        with self._client_lock:
            client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()
