"""An archive is a stack of layers: the tar stream, then zstd (unless
compression is `none`), then age (when encryption is on), into the sink.

Each layer takes bytes from the one below (`take`) and passes what it makes
to the one above, and bounds its own size: `final(extra)` is an upper bound
of everything it will have emitted at the end of the stream if `extra` more
bytes come in, `expand(n)` an upper bound of what n more input bytes add to
that (`final(x + n) <= final(x) + expand(n)`, and `expand(a) + expand(b) >=
expand(a + b)`). Bounds compose: the archive's final size is the top
layer's `final` of what the layers below will still emit (writer.py), so no
archive exceeds its limit, whatever the stack. `ArchiveFormat` names the
stack (`.tar`, `.tar.zst`, `.tar.age`, `.tar.zst.age`), builds it, and
bounds the size of an archive that holds n tar bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from eventbak.core.events import archive_suffix

if TYPE_CHECKING:
    from eventbak.config import Compression


class Output(Protocol):
    """Where a layer's bytes go: the next layer, or the sink."""

    def take(self, data: bytes | memoryview) -> None:
        """Take ownership of `data` (bytes, or a view of bytes: never of a reused buffer)."""

    def close(self) -> None:
        """End of the stream: everything taken is written (errors raised here)."""

    def abort(self) -> None:
        """Drop the stream; errors are ignored."""


class Layer(Output, Protocol):
    name: str
    suffix: str
    given: int  # input bytes taken so far

    def final(self, extra: int) -> int: ...

    def expand(self, n: int) -> int: ...

    def tighten(self) -> None:
        """Emit what can be emitted now, so that `final` comes closer to the truth."""


@dataclass(frozen=True)
class ArchiveFormat:
    """The layers of the archives a session writes."""

    compression: Compression
    recipients: tuple[str, ...] = ()

    @property
    def layers(self) -> list[str]:
        names = [] if self.compression.mode == "none" else ["zstd"]
        return names + (["age"] if self.recipients else [])

    @property
    def suffix(self) -> str:
        return archive_suffix(self.layers)

    def build(self, sink: Output) -> list[Layer]:
        """The layers, bottom (next to tar) first, each writing into the next."""
        from eventbak.archive.age import AgeLayer
        from eventbak.archive.zstd import ZstdLayer

        layers: list[Layer] = []
        out = sink
        if self.recipients:
            out = AgeLayer(out, self.recipients)
            layers.append(out)
        if self.compression.mode != "none":
            layers.insert(0, ZstdLayer(out, self.compression.level))
        return layers

    def fresh_size(self, n: int) -> int:
        """Upper bound of the size of an archive of n tar bytes in all."""
        from eventbak.archive.age import AgeLayer
        from eventbak.archive.zstd import ZstdLayer

        if self.compression.mode != "none":
            n = ZstdLayer.fresh(n)
        if self.recipients:
            n = AgeLayer.fresh(n, self.recipients)
        return n
