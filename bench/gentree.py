"""Generate a reproducible mixed tree for benchmarks.

    python bench/gentree.py DIR --scale 1.0 --seed 1


Scale 1.0 is about 3 GB: compressible text/source-like files (4 KiB-2 MiB),
incompressible media named .jpg/.mp4/.png (1-200 MiB), tens of thousands of
small files (100 B-8 KiB) in nested directories, empty files, a few symlinks.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

WORDS = (
    b"def class return import self value result error config archive session vault "
    b"for while if else try except with yield async await lambda None True False "
    b"the of and to in is it that was for on are as with his they at be this from"
).split()


def _text(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        line = b" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        out += b"    " * rng.randint(0, 3) + line + b"  # %d\n" % rng.randint(0, 99999)
    return bytes(out[:size])


def _noise(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def generate(root: Path, scale: float, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    stats = {"files": 0, "bytes": 0}

    def write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        stats["files"] += 1
        stats["bytes"] += len(data)

    # compressible text: ~0.8 GB at scale 1
    budget = int(800e6 * scale)
    i = 0
    while budget > 0:
        size = min(budget, int(rng.lognormvariate(11.5, 1.3)) % (2 * 1024 * 1024) + 4096)
        write(root / "src" / f"pkg{i % 40:02d}" / f"mod{i:05d}.py", _text(rng, size))
        budget -= size
        i += 1
    # incompressible media: ~2 GB at scale 1
    budget = int(2000e6 * scale)
    i = 0
    while budget > 0:
        size = min(budget, rng.randint(1, 200) * 1024 * 1024)
        ext = rng.choice([".jpg", ".mp4", ".png"])
        write(root / "media" / f"album{i % 8}" / f"item{i:04d}{ext}", _noise(rng, size))
        budget -= size
        i += 1
    # small files: ~40,000 at scale 1
    for i in range(int(40000 * scale)):
        size = rng.randint(100, 8192)
        data = _text(rng, size) if i % 3 else _noise(rng, size)
        write(root / "small" / f"a{i % 20}" / f"b{i % 13}" / f"c{i % 7}" / f"f{i:06d}.dat", data)
    for i in range(max(1, int(200 * scale))):
        write(root / "empty" / f"e{i:04d}", b"")
    for i in range(5):
        link = root / "links" / f"l{i}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            os.symlink(f"../src/pkg{i:02d}", link)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    s = generate(a.dir, a.scale, a.seed)
    print(f"{s['files']} files, {s['bytes'] / 1e6:.0f} MB in {a.dir}")


if __name__ == "__main__":
    main()
