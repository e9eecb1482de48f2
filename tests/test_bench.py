"""Smoke test of the benchmark harness (bench/run.py) at a tiny scale.

It checks that every tool's output restores correctly and that the JSON has
the documented shape, not any speed (nor the targets' verdicts, meaningless at
this scale). Peers that cannot be installed (no root, no network) must show up
as skipped, not as failures; so must the encrypted case without `age`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

ROW_KEYS = {
    "case", "tool", "median_s", "mb_per_s", "files_per_s", "peak_rss_mib", "output_mib", "ok",
    "error", "note", "input_bytes", "input_files", "runs",
}  # fmt: skip
TOOLS = {"eventbak", "tar-zstd", "tar-xz", "restic", "borg"}
BACKUP_CASES = {"full", "small", "second", "restore"}
#: the policy cases and their references
POLICY = {"encrypted": "tar-zstd-age", "incompressible": "tar-cat", "compressible": "tar-zstd-T2"}
POLICY_TARGETS = {
    "encrypted >= tar|zstd|age",
    "encrypted output <= tar|zstd|age",
    "encrypted peak RSS < 200 MiB",
    "incompressible >= 0.9x tar|cat",
    "compressible ratio >= zstd -3",
}


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
        "cases",
        "policy",
    } <= set(result)
    assert result["params"]["runs"] == 1
    assert result["tree"]["files"] > 100 and result["tree"]["small_files"] > 0
    assert set(result["tools"]) == TOOLS
    assert set(result["cases"]) == set(POLICY)

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
    # the policy cases: eventbak against one reference each; the encrypted one
    # needs age and is skipped with its reason (a note) without it
    policy = set()
    for case, ref in POLICY.items():
        info = result["cases"][case]
        assert info["selected"]
        if info["available"]:
            policy.add(case)
            assert ran[ref] == {case}
            assert set(result["policy"][case]) >= {"input", "eventbak", "reference"}
            for tool in ("eventbak", ref):
                r = next(r for r in rows if r["case"] == case and r["tool"] == tool)
                assert r["stored_bytes"] > 0 and r["ratio"] > 0 and r["output_bytes"] > 0
        else:
            assert case == "encrypted" and skipped[case] == info["skipped"]
            assert "age" in info["skipped"] or "--recipient" in info["skipped"]
            assert ref not in ran
            assert any(n.startswith(f"{case} skipped: ") for n in result["notes"])
    assert "encrypted" in policy or shutil.which("age") is None
    assert "AGE-SECRET-KEY" not in out.read_text()
    # eventbak needs nothing from apt: it always runs every case; s3-upload
    # needs SeaweedFS (the dev venv's weed) and is skipped with a note without it
    s3 = result["s3"]
    if s3.get("skipped"):
        assert skipped["s3"] and "boto3" not in ran
        assert ran["eventbak"] == BACKUP_CASES | {"replay", "replay-1M"} | policy
    else:
        assert ran["eventbak"] == BACKUP_CASES | {"replay", "replay-1M", "s3-upload"} | policy
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
    verdicts = {t["target"]: t["status"] for t in result["targets"]}
    assert set(verdicts) >= POLICY_TARGETS
    for name in POLICY_TARGETS:  # measured (PASS or MISS: not judged at this scale)
        if name.split()[0] in policy:
            assert verdicts[name] != "n/a", name
    # the table on stdout
    assert "| case" in proc.stdout and "targets" in proc.stdout


def _load_run(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", mod)  # its dataclasses look it up
    spec.loader.exec_module(mod)
    return mod


def test_bench_encrypted_skipped_without_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `age` (and --no-install) the encrypted case is skipped with its
    reason: no row, a note, the JSON's cases entry; nothing else runs."""
    run = _load_run(monkeypatch)
    real_which = shutil.which

    def which(cmd: str, *args: object, **kwargs: object) -> str | None:
        return None if cmd == "age" else real_which(cmd)

    monkeypatch.setattr(run.shutil, "which", which)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts its snapshot first
    monkeypatch.setenv("PYTHONPATH", "")  # main() sets it for its children
    out = tmp_path / "r.json"
    argv = ["--only", "encrypted", "--runs", "1", "--no-install"]
    code = run.main([*argv, "--workdir", str(tmp_path), "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    info = result["cases"]["encrypted"]
    assert info == {
        "selected": True,
        "available": False,
        "skipped": "not installed: age (Debian: age, --no-install)",
    }
    assert {"tool": "encrypted", "reason": info["skipped"]} in result["skipped"]
    assert result["results"] == [] and result["tree"] is None
    assert "encrypted skipped: not installed: age (Debian: age, --no-install)" in result["notes"]
    status = {t["target"]: t["status"] for t in result["targets"]}
    assert status["encrypted >= tar|zstd|age"] == "n/a"
