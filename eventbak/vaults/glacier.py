"""The Glacier vault: the legacy vault API, `glacier://VAULT?endpoint_url=...&region=...`.

A one-part vault (`part_size` is None): every archive is one UploadArchive,
so an archive must stay under Glacier's 4 GB limit for a single request.

Glacier has no keys and no listing that answers in less than hours:

* The vault chooses an archive id for every upload; the receipt's `key` is
  that id (what a later retrieval names). Our logical key
  (`archives/<session>/<archive><suffix>`) and the archive's SHA-256 go into
  the archive description as compact JSON, ids and checksums only, so that an
  inventory can map archives back to the log after losing the machine.
* `head` and `get_small` cannot be answered without an inventory or a
  retrieval job (hours), so they say "nothing" (None). The uploader therefore
  sends an archive again after a crash mid-upload: resume granularity here is
  the whole archive, and a lost response can leave a duplicate that only an
  inventory (`start_inventory`, `read_inventory`) shows.
* Reading is a retrieval job, not `open`/`request_thaw`: `start_retrieval`,
  `job_status` until "Succeeded", then `open_job_output`.

Checksums: Glacier verifies and reports the SHA-256 *tree hash* (1 MiB
leaves, hashed pairwise), which cannot be derived from the plain SHA-256 the
log holds; `tree_hash` and `TreeHasher` compute it. Uploads send our tree hash
and refuse a receipt that reports another.

Every error a call can meet goes through one translation (`_translating`):
refusals (credentials, permissions, a closed account) are `VaultRefused`,
a vault that does not answer is `VaultUnreachable`, each one line naming the
vault and never the credentials, which come from boto3's standard chain only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, NoReturn

import boto3
import msgspec
from botocore import exceptions as bce
from botocore.config import Config

from eventbak.errors import VaultError, VaultRefused, VaultUnreachable
from eventbak.vaults.base import Held, Part, Receipt, Tier, Unfinished
from eventbak.vaults.url import VaultSpec

MIB = 1024 * 1024
#: Glacier's limit for one UploadArchive ("4 GB"; decimal, the stricter reading).
MAX_UPLOAD = 4 * 1000**3
#: Glacier's limit for an archive description (printable ASCII only).
MAX_DESCRIPTION = 1024
_READ_CHUNK = 4 * MIB

JobStatus = Literal["InProgress", "Succeeded", "Failed"]

# Codes after which retrying cannot help until the user fixes something.
_REFUSED_CODES = frozenset({
    "AccessDeniedException", "AccessDenied", "UnrecognizedClientException",
    "InvalidClientTokenId", "InvalidSignatureException", "SignatureDoesNotMatch",
    "IncompleteSignatureException", "MissingAuthenticationTokenException",
    "ExpiredTokenException", "ExpiredToken", "NoLongerSupportedException",
    "PolicyEnforcedException", "LimitExceededException",
})  # fmt: skip
# "VaultNotFound" is what moto answers where AWS says ResourceNotFoundException.
_MISSING_CODES = frozenset({"ResourceNotFoundException", "VaultNotFound", "404"})
# botocore's standard mode has already retried these: the service is not answering.
_UNAVAILABLE_CODES = frozenset({
    "ServiceUnavailableException", "ThrottlingException", "Throttling",
    "RequestTimeoutException", "SlowDown",
})  # fmt: skip


# -- the SHA-256 tree hash ----------------------------------------------------


class TreeHasher:
    """AWS's SHA-256 tree hash, fed incrementally: the SHA-256 of every 1 MiB
    leaf (the last one shorter), then digests combined pairwise, level by level,
    an odd one carried up unchanged. Data of at most 1 MiB hashes to its plain
    SHA-256.

    Completed subtrees are combined as soon as they have a sibling (a binary
    counter), so memory stays O(log n) however large the archive; combining
    the leftover subtrees from right to left at the end gives the same tree as
    the level-by-level definition."""

    def __init__(self) -> None:
        self._leaf = hashlib.sha256()
        self._leaf_fill = 0
        self._stack: list[tuple[int, bytes]] = []  # (height, digest), heights decreasing

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            take = min(MIB - self._leaf_fill, len(view))
            self._leaf.update(view[:take])
            self._leaf_fill += take
            view = view[take:]
            if self._leaf_fill == MIB:
                self._push(self._leaf.digest())
                self._leaf = hashlib.sha256()
                self._leaf_fill = 0

    def _push(self, digest: bytes) -> None:
        height = 0
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            digest = hashlib.sha256(left + digest).digest()
            height += 1
        self._stack.append((height, digest))

    def digest(self) -> bytes:
        nodes = [d for _, d in self._stack]
        if self._leaf_fill or not nodes:  # a short last leaf, or no data at all
            nodes.append(self._leaf.digest())
        top = nodes[-1]
        for left in reversed(nodes[:-1]):
            top = hashlib.sha256(left + top).digest()
        return top

    def hexdigest(self) -> str:
        return self.digest().hex()


def tree_hash(path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview) -> str:
    """The SHA-256 tree hash (hex) of a file's bytes or of the bytes given."""
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        hasher = TreeHasher()
        hasher.update(path_or_bytes)
        return hasher.hexdigest()
    with open(path_or_bytes, "rb", buffering=0) as f:
        return _hash_stream(f)[1]


def _hash_stream(f: io.BufferedIOBase | io.RawIOBase) -> tuple[str, str]:
    """(plain SHA-256, tree hash), both hex, of the rest of `f`, in one pass."""
    plain = hashlib.sha256()
    tree = TreeHasher()
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        plain.update(view[:n])
        tree.update(view[:n])
    return plain.hexdigest(), tree.hexdigest()


# -- descriptions and inventories ---------------------------------------------


class _Description(msgspec.Struct):
    eventbak: int
    key: str
    sha256: str | None = None
    kind: str | None = None


class _InventoryArchive(msgspec.Struct):
    archive_id: str = msgspec.field(name="ArchiveId")
    description: str = msgspec.field(name="ArchiveDescription", default="")
    created: str = msgspec.field(name="CreationDate", default="")
    size: int = msgspec.field(name="Size", default=0)
    tree_hash: str = msgspec.field(name="SHA256TreeHash", default="")


class _Inventory(msgspec.Struct):
    archives: list[_InventoryArchive] = msgspec.field(name="ArchiveList")


@dataclass(frozen=True)
class InventoryEntry:
    """One archive of a vault inventory. `key`, `sha256` and `kind` come from
    the description when eventbak wrote it (kind "archive" for `put`, "catalog"
    for `put_small`); they are None for an archive someone else stored."""

    archive_id: str
    size: int
    created: datetime
    tree_hash: str
    description: str
    key: str | None = None
    sha256: str | None = None
    kind: str | None = None


def _description(fields: dict[str, object]) -> str:
    text = msgspec.json.encode(fields).decode("ascii", errors="replace")
    if len(text) > MAX_DESCRIPTION or not all(" " <= c <= "~" for c in text):
        raise VaultError(
            f"archive description {text[:80]!r}... is not at most {MAX_DESCRIPTION} "
            "printable ASCII characters (Glacier's limit)"
        )
    return text


def _parse_description(text: str) -> _Description | None:
    try:
        found = msgspec.json.decode(text, type=_Description)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return found if found.eventbak == 1 else None


# -- the vault ----------------------------------------------------------------


class JobGone(VaultError):
    """A retrieval or inventory job the vault no longer knows (Glacier keeps a
    finished job's output for about 24 hours), or whose output is not ready:
    start the job again."""


class _JobOutput(io.RawIOBase):
    """A job's streaming body as a raw stream: errors translated like every
    call, and the bytes checked against the tree hash the vault sent (it sends
    one for whole archives and tree-hash-aligned ranges) when the end is read."""

    def __init__(self, vault: GlacierVault, job_id: str, body: Any, expected: str) -> None:
        super().__init__()
        self._vault = vault
        self._job_id = job_id
        self._body = body
        self._expected = expected.lower()
        self._hasher = TreeHasher()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        with self._vault._translating(f"reading the output of job {self._job_id}"):
            data: bytes = self._body.read(len(view))
        n = len(data)
        view[:n] = data
        self._hasher.update(data)
        if n == 0 and len(view) and not self._checked:
            self._checked = True
            got = self._hasher.hexdigest()
            if self._expected and got != self._expected:
                raise VaultError(
                    f"vault {self._vault.ref}: the output of job {self._job_id} has tree hash "
                    f"{got}, the vault announced {self._expected}"
                )
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class GlacierVault:
    part_size: int | None = None
    concurrency = 1
    local_root: Path | None = None

    def __init__(self, spec: VaultSpec) -> None:
        if spec.kind != "glacier":
            raise ValueError(f"not a glacier:// vault: {spec.url}")
        self.spec = spec
        self.name = spec.name
        self.url = spec.url
        self.ref = spec.ref
        # Made on first use: making a client resolves the credential chain,
        # which may ask an instance-metadata endpoint (network).
        self._client_lock = threading.Lock()
        self._client_obj: Any = None
        # The content SHA-256 for the UploadArchive running in this thread
        # (see _add_content_sha256); thread-local because clients are shared.
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"GlacierVault({self.ref})"

    # -- plumbing ---------------------------------------------------------

    @property
    def _client(self) -> Any:
        with self._client_lock:
            if self._client_obj is None:
                with self._translating("connecting"):
                    client = boto3.session.Session().client(
                        "glacier",
                        endpoint_url=self.spec.endpoint_url,
                        region_name=self.spec.region,
                        config=Config(retries={"mode": "standard"}),
                    )
                client.meta.events.register_first(
                    "before-call.glacier.UploadArchive", self._add_content_sha256
                )
                self._client_obj = client
            return self._client_obj

    def _add_content_sha256(self, params: dict[str, Any], **kwargs: Any) -> None:
        # botocore would otherwise read the whole file once more to compute
        # x-amz-content-sha256 (and the signature uses it); we hashed it already.
        sha256 = getattr(self._local, "content_sha256", None)
        if sha256:
            params["headers"]["x-amz-content-sha256"] = sha256

    @contextlib.contextmanager
    def _translating(self, what: str, missing: VaultError | None = None) -> Iterator[None]:
        """Turn whatever botocore raises into one line naming the vault and
        `what` was being done; `missing` replaces the default for not-found."""
        try:
            yield
        except bce.ClientError as exc:
            raise self._client_error(what, exc, missing) from exc
        except (
            bce.NoCredentialsError,
            bce.PartialCredentialsError,
            bce.CredentialRetrievalError,
            bce.ProfileNotFound,
        ) as exc:
            raise VaultRefused(
                f"vault {self.ref}: {what}: no usable AWS credentials ({type(exc).__name__}; "
                "boto3's standard chain: environment, profile, role)"
            ) from exc
        except bce.NoRegionError as exc:
            raise VaultRefused(
                f"vault {self.ref}: no AWS region (add ?region=... to the vault URL "
                "or set AWS_DEFAULT_REGION)"
            ) from exc
        except (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError) as exc:
            raise VaultUnreachable(
                f"vault {self.ref}: {what}: no answer from {self._endpoint()} "
                f"({type(exc).__name__}, after retries)"
            ) from exc

    def _endpoint(self) -> str:
        return self.spec.endpoint_url or f"Glacier in {self.spec.region or 'the default region'}"

    def _client_error(self, what: str, exc: Any, missing: VaultError | None) -> VaultError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        # AWS's own message is kept to its first line and never shown for
        # refusals: a signature error quotes the request it signed.
        message = str(error.get("Message", "")).strip().splitlines()[:1]
        detail = f"{code}: {message[0][:200]}" if message else code
        where = f"vault {self.ref}: {what}"
        if code in _REFUSED_CODES or status == 403:
            return VaultRefused(
                f"{where}: refused ({code or status}): check the credentials, "
                "the vault's access policy and the account"
            )
        if code in _MISSING_CODES:
            return missing or VaultRefused(f"{where}: the vault does not exist ({code})")
        if code in _UNAVAILABLE_CODES or status in (502, 503, 504):
            return VaultUnreachable(
                f"{where}: the vault is not answering ({code or status}, after retries)"
            )
        if code == "InsufficientCapacityException":
            return VaultError(
                f"{where}: no Expedited capacity now: use the Standard tier "
                "or buy provisioned capacity"
            )
        if status >= 500:
            why = "an internal error; some servers answer so to an unknown job or archive id"
            return VaultError(f"{where}: the vault failed with HTTP {status} ({why})")
        return VaultError(f"{where}: {detail}")

    def _call(
        self, what: str, method: str, missing: VaultError | None = None, **params: Any
    ) -> dict[str, Any]:
        with self._translating(what, missing):
            answer: dict[str, Any] = getattr(self._client, method)(
                accountId="-", vaultName=self.name, **params
            )
        return answer

    def _whole_archives(self) -> NoReturn:
        raise VaultError(f"vault {self.ref} takes whole archives only (no multipart uploads)")

    # -- setting up -------------------------------------------------------

    def prepare(self) -> None:
        """Create the vault (CreateVault is idempotent: it succeeds for a vault
        that exists). A user allowed to upload but not to create vaults is
        refused CreateVault: then the vault is fine if DescribeVault finds it."""
        try:
            self._call("creating the vault", "create_vault")
        except VaultRefused:
            try:
                self._call("looking up the vault", "describe_vault")
            except VaultError:
                pass
            else:
                return
            raise

    def key_for(self, session: str, archive: str, suffix: str) -> str:
        """A logical key: Glacier has no keys, this one goes in the description."""
        return f"archives/{session}/{archive}{suffix}"

    def expected_checksum(self, sha256: str, parts: list[Part]) -> str:
        """Always "": Glacier reports a tree hash, which cannot be derived from the
        plain SHA-256 (it needs every 1 MiB leaf's digest), so callers compare
        sizes only. Uploads check the tree hash themselves (`put`)."""
        return ""

    # -- one part ---------------------------------------------------------

    def put(self, key: str, source: Path, size: int, sha256: str) -> Receipt:
        """UploadArchive of the whole file, streamed from it, with our tree hash
        (AWS refuses the bytes if its own differs). The file is hashed first, in
        one pass for both hashes, and must still be what the log says it is."""
        if size > MAX_UPLOAD:
            raise VaultError(
                f"vault {self.ref}: {key} is {size} bytes, but Glacier takes at most "
                f"{MAX_UPLOAD} bytes in one upload: set the archive size limit "
                "(archive_size) lower for a glacier:// vault"
            )
        description = _description({"eventbak": 1, "key": key, "sha256": sha256})
        try:
            with open(source, "rb") as f:
                held = os.fstat(f.fileno()).st_size
                plain, tree = _hash_stream(f)
                if held != size or plain != sha256:
                    raise VaultError(
                        f"vault {self.ref}: staged {key} has sha256 {plain} ({held} bytes), "
                        f"expected {sha256} ({size} bytes): not sent"
                    )
                f.seek(0)
                answer = self._upload(f"storing {key}", f, tree, plain, description)
        except OSError as exc:
            raise VaultError(
                f"vault {self.ref}: cannot read staged {key}: {exc.strerror or exc}"
            ) from exc
        return self._receipt(key, answer, size, tree, plain)

    def _upload(
        self, what: str, body: BinaryIO | bytes, tree: str, plain: str, description: str
    ) -> dict[str, Any]:
        self._local.content_sha256 = plain
        try:
            return self._call(
                what, "upload_archive", archiveDescription=description, checksum=tree, body=body
            )
        finally:
            self._local.content_sha256 = None

    def _receipt_checksum_ok(self, returned: str, tree: str, sha256: str) -> bool:
        """Whether the checksum in the upload's answer confirms our bytes: AWS
        answers with the tree hash it computed (and verified against ours)."""
        return returned == tree

    def _receipt(
        self, key: str, answer: dict[str, Any], size: int, tree: str, sha256: str
    ) -> Receipt:
        archive_id = str(answer.get("archiveId") or "")
        returned = str(answer.get("checksum") or "").lower()
        if archive_id and self._receipt_checksum_ok(returned, tree, sha256):
            return Receipt(archive_id, size, returned)
        if archive_id:
            # No receipt means the log never learns this id, and only an
            # inventory could find the archive again: remove it rather than
            # pay for it forever.
            with contextlib.suppress(VaultError):
                self._call(f"removing archive {archive_id}", "delete_archive", archiveId=archive_id)
        raise VaultError(
            f"vault {self.ref}: storing {key}: the vault confirmed tree hash "
            f"{returned or '(none)'} for archive {archive_id or '(no id)'}, we sent {tree}"
        )

    # -- multipart: never planned for a one-part vault ----------------------

    def begin(self, key: str) -> str:
        self._whole_archives()

    def send_part(
        self, key: str, upload_id: str, number: int, source: Path, offset: int, length: int
    ) -> Part:
        self._whole_archives()

    def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        return None

    def complete(
        self, key: str, upload_id: str, parts: list[Part], size: int, sha256: str
    ) -> Receipt:
        self._whole_archives()

    def abort(self, key: str, upload_id: str) -> None:
        return None

    def unfinished(self, sessions: set[str]) -> list[Unfinished]:
        """[]: eventbak never starts Glacier multipart uploads."""
        return []

    # -- reading and small objects -----------------------------------------

    def head(self, key: str) -> Held | None:
        """None, always: Glacier can say what it holds only through an
        inventory job (hours). So an archive whose upload was interrupted is
        sent again whole."""
        return None

    def put_small(self, key: str, data: bytes) -> Receipt:
        """An archive of its own (Glacier has no hot class: reading it back
        needs a retrieval job too)."""
        description = _description({"eventbak": 1, "key": key, "kind": "catalog"})
        tree = tree_hash(data)
        plain = hashlib.sha256(data).hexdigest()
        answer = self._upload(f"storing {key}", data, tree, plain, description)
        return self._receipt(key, answer, len(data), tree, plain)

    def get_small(self, key: str) -> bytes | None:
        """None: reading any archive back needs a retrieval job (hours), and the
        archive id is not derivable from `key`; use the retrieval steps."""
        return None

    def list_small(self, prefix: str) -> list[str]:
        raise VaultError(
            f"vault {self.ref}: a Glacier vault lists its archives only through an "
            f"inventory job, not by key ({prefix})"
        )

    def request_thaw(self, key: str, tier: Tier, days: int) -> None:
        raise VaultError(
            f"vault {self.ref}: a Glacier archive is thawed by a retrieval job "
            "(start_retrieval, job_status, open_job_output), not request_thaw"
        )

    def open(self, key: str) -> BinaryIO:
        raise VaultError(
            f"vault {self.ref}: a Glacier archive is read through a retrieval job "
            "(start_retrieval, job_status, open_job_output)"
        )

    # -- retrieval jobs ---------------------------------------------------

    def start_retrieval(self, archive_id: str, tier: Tier) -> str:
        """Start an archive-retrieval job (Expedited: minutes, Standard: hours,
        Bulk: up to half a day on AWS); returns its job id."""
        gone = VaultError(f"vault {self.ref}: archive {archive_id} is not in the vault")
        answer = self._call(
            f"starting a retrieval of archive {archive_id}",
            "initiate_job",
            gone,
            jobParameters={"Type": "archive-retrieval", "ArchiveId": archive_id, "Tier": tier},
        )
        return self._job_id(answer)

    def start_inventory(self) -> str:
        """Start an inventory-retrieval job (JSON); returns its job id. The
        inventory is Glacier's, updated about once a day: archives stored since
        may be missing from it."""
        answer = self._call(
            "starting an inventory",
            "initiate_job",
            jobParameters={"Type": "inventory-retrieval", "Format": "JSON"},
        )
        return self._job_id(answer)

    def _job_id(self, answer: dict[str, Any]) -> str:
        job_id = str(answer.get("jobId") or "")
        if not job_id:
            raise VaultError(f"vault {self.ref}: the vault started a job but gave no job id")
        return job_id

    def _job_gone(self, job_id: str) -> JobGone:
        return JobGone(
            f"vault {self.ref}: job {job_id} is unknown, expired or not finished: start it again"
        )

    def job_status(self, job_id: str) -> JobStatus:
        answer = self._call(
            f"asking about job {job_id}", "describe_job", self._job_gone(job_id), jobId=job_id
        )
        status = str(answer.get("StatusCode") or "")
        if status == "InProgress":
            return "InProgress"
        if status == "Succeeded":
            return "Succeeded"
        if status == "Failed":
            return "Failed"
        raise VaultError(f"vault {self.ref}: job {job_id} has an unknown status {status!r}")

    def open_job_output(self, job_id: str) -> BinaryIO:
        """The output of a finished job as a stream (read(n), close, `with`).
        Reading it to the end checks the bytes against the tree hash the vault
        announced, if it announced one; a mismatch is a VaultError then."""
        answer = self._call(
            f"reading the output of job {job_id}",
            "get_job_output",
            self._job_gone(job_id),
            jobId=job_id,
        )
        raw = _JobOutput(self, job_id, answer["body"], str(answer.get("checksum") or ""))
        return io.BufferedReader(raw, buffer_size=MIB)

    def read_inventory(self, job_id: str) -> list[InventoryEntry]:
        """The archives a finished inventory job lists, in the vault's order."""
        with self.open_job_output(job_id) as stream:
            data = stream.read()
        try:
            inventory = msgspec.json.decode(data, type=_Inventory)
            entries = []
            for a in inventory.archives:
                ours = _parse_description(a.description)
                entries.append(
                    InventoryEntry(
                        archive_id=a.archive_id,
                        size=a.size,
                        created=datetime.fromisoformat(a.created),
                        tree_hash=a.tree_hash.lower(),
                        description=a.description,
                        key=ours.key if ours else None,
                        sha256=ours.sha256 if ours else None,
                        kind=(ours.kind or "archive") if ours else None,
                    )
                )
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise VaultError(
                f"vault {self.ref}: the output of job {job_id} is not a JSON inventory: {exc}"
            ) from exc
        return entries

    def close(self) -> None:
        with self._client_lock:
            client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()
