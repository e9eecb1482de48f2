"""The content hash's cost, as an A/B of whole backups (docs/benchmarks.md).

    python bench/hash_ab.py blake3|sha256|none -- EVENTBAK ARGS...
    python bench/hash_ab.py --tree TREE blake3|sha256|none

The first form runs `eventbak ARGS` with the builder's content hash swapped
for the one named (eventbak itself uses BLAKE3); time it from outside
(`/usr/bin/time`). The second hashes every file of TREE the way the builder
reads it (1 MiB reads) and prints the time: `none` reads only.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any


class _NoHash:
    def update(self, data: bytes) -> None:
        pass

    def digest(self) -> bytes:
        return b""


def _factory(name: str) -> Any:
    if name == "blake3":
        import blake3

        return blake3.blake3
    if name == "sha256":
        return hashlib.sha256
    if name == "none":
        return _NoHash
    raise SystemExit(f"unknown hash {name!r}: blake3, sha256 or none")


def hash_tree(root: str, name: str) -> None:
    new = _factory(name)
    files = total = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for dirpath, _, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            if os.path.islink(path):
                continue
            h = new()
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    total += len(chunk)
            h.digest()
            files += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{name}: {files} files, {total / 1e9:.2f} GB, wall {wall:.2f} s, cpu {cpu:.2f} s")


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "--tree":
        hash_tree(argv[1], argv[2])
        return
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit(__doc__)
    import eventbak.pipeline.builder as builder
    from eventbak.cli import main as eventbak

    new = _factory(argv[0])
    # the builder calls `blake3.blake3()`: the module name now gives `new`
    vars(builder)["blake3"] = type("_Swapped", (), {"blake3": staticmethod(new)})
    sys.argv = ["eventbak", *argv[2:]]
    eventbak()


if __name__ == "__main__":
    main(sys.argv[1:])
