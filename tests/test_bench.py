"""Smoke test of the benchmark harness (bench/run.py) at a tiny scale.

It checks that every tool's output restores correctly and that the JSON has
the documented shape, not any speed. Peers that cannot be installed (no root,
no network) must show up as skipped, not as failures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

ROW_KEYS = {
    "case", "tool", "median_s", "mb_per_s", "files_per_s", "peak_rss_mib", "output_mib", "ok",
    "error", "note", "input_bytes", "input_files", "runs",
}  # fmt: skip
TOOLS = {"eventbak", "tar-zstd", "tar-xz", "restic", "borg"}
BACKUP_CASES = {"full", "small", "second", "restore"}


@pytest.mark.slow
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["--scale", "0.003", "--runs", "1", "--workdir", str(tmp_path), "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(RUN), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())

    assert {
        "params",
        "machine",
        "eventbak",
        "tree",
        "tools",
        "skipped",
        "results",
        "targets",
        "notes",
        "s3",
    } <= set(result)
    assert result["params"]["runs"] == 1
    assert result["tree"]["files"] > 100 and result["tree"]["small_files"] > 0
    assert set(result["tools"]) == TOOLS

    rows = result["results"]
    assert rows
    for r in rows:
        assert set(r) >= ROW_KEYS, r
        assert r["ok"] is True, f"{r['case']} / {r['tool']}: {r['error']}"
        assert len(r["runs"]) == 1
        assert r["median_s"] > 0 and r["peak_rss_mib"] > 0

    ran: dict[str, set[str]] = {}
    for r in rows:
        ran.setdefault(r["tool"], set()).add(r["case"])
    skipped = {s["tool"]: s["reason"] for s in result["skipped"]}
    for tool, info in result["tools"].items():
        if info["available"]:
            assert tool not in skipped
            assert tool in ran, f"{tool} available but did not run"
        elif info["selected"]:
            # not installed (and not installable here): a note, never a failure
            assert skipped[tool] and tool not in ran
            assert any(tool in n for n in result["notes"])
    # eventbak needs nothing from apt: it always runs every case; s3-upload
    # needs SeaweedFS (the dev venv's weed) and is skipped with a note without it
    s3 = result["s3"]
    if s3.get("skipped"):
        assert skipped["s3"] and "boto3" not in ran
        assert ran["eventbak"] == BACKUP_CASES | {"replay", "replay-1M"}
    else:
        assert ran["eventbak"] == BACKUP_CASES | {"replay", "replay-1M", "s3-upload"}
        assert ran["boto3"] == {"s3-upload"}
        assert s3["part_size"] == 16 * 1024 * 1024 and s3["concurrency"] == 4
        assert len(s3["round_ratios"]) == 1
    for tool in ("tar-zstd", "restic", "borg"):
        if tool in ran:
            assert ran[tool] == BACKUP_CASES
    if "tar-xz" in ran:
        assert ran["tar-xz"] == {"text-subset"}
    # what is on PATH must have been used (the harness does not skip installed tools)
    for tool, cmd in (("restic", "restic"), ("borg", "borg")):
        if shutil.which(cmd):
            assert tool in ran

    synthetic = next(r for r in rows if r["case"] == "replay-1M")
    assert synthetic["input_files"] == result["params"]["replay_files"] >= 10_000
    assert any("SYNTHETIC" in n for n in result["notes"])
    assert {t["status"] for t in result["targets"]} <= {"PASS", "MISS", "n/a"}
    # the table on stdout
    assert "| case" in proc.stdout and "targets" in proc.stdout
