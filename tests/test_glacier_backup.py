"""Backups into a Glacier vault on a real moto server over HTTP: archives go up
whole (UploadArchive with the tree hash), and `inspect --from-vault` runs an
inventory job recorded in the log and compares it with the log.

The backups run in-process, not as `eventbak backup` subprocesses: moto
returns a plain SHA-256 where AWS returns the tree hash, so the vault is the
test's `MotoGlacierVault`, which accepts exactly that (eventbak's own vault
keeps AWS's behaviour and would refuse moto's receipt)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import trio

from eventbak import inventory
from eventbak.config import Compression
from eventbak.core import events as ev
from eventbak.pipeline.coordinator import BackupRequest
from eventbak.pipeline.scanner import normalize_roots
from eventbak.runner import run_backup
from eventbak.statedir import StateDir, read_state
from eventbak.vaults.url import parse_vault
from tests import servers
from tests.test_glacier_vault import MotoGlacierVault, new_name

pytestmark = pytest.mark.slow

MIB = 1 << 20


def make_tree(root: Path) -> None:
    rng = random.Random(5)
    (root / "a").mkdir(parents=True)
    for i in range(5):
        (root / "a" / f"photo{i}.jpg").write_bytes(rng.randbytes(700_000 + i))
    (root / "b.txt").write_bytes(b"secret-plan.txt is not a name Glacier may see\n" * 2000)
    (root / "big.bin").write_bytes(rng.randbytes(3 * MIB))


def glacier_url(server: servers.Server, name: str) -> str:
    return f"glacier://{name}?endpoint_url={server.endpoint_url}&region=us-east-1"


def backup(state: Path, url: str, src: Path) -> Any:
    req = BackupRequest(
        dataset="glacier", paths=normalize_roots([os.fsencode(src)]), vault_url=url,
        archive_size=1 * MIB, compression=Compression("auto"), exclude=[],
    )  # fmt: skip
    sd = StateDir.open(state)
    vault = MotoGlacierVault(parse_vault(url))
    try:
        return trio.run(run_backup, sd, req, vault, None)
    finally:
        vault.close()
        sd.close()


@pytest.fixture
def backed_up(moto_server: servers.Server, tmp_path: Path) -> tuple[Path, str, Path]:
    src = tmp_path / "src"
    make_tree(src)
    url = glacier_url(moto_server, new_name())
    outcome = backup(tmp_path / "state", url, src)
    assert outcome.state == "completed"
    return tmp_path / "state", url, src


def test_backup_to_glacier_records_archive_ids_and_tree_hashes(
    backed_up: tuple[Path, str, Path], moto_server: servers.Server
) -> None:
    state, url, _ = backed_up
    st, image = read_state(state)
    uploaded = [a for a in st.archives.values() if a.state == "uploaded"]
    assert len(uploaded) >= 5  # 1 MiB archives of a ~7 MB tree, big.bin split
    for a in uploaded:
        assert len(a.key) == 32 and "/" not in a.key  # the archive id moto chose (its MD5)
        assert a.checksum  # moto's "tree hash" (a plain SHA-256: see the module docstring)
    assert st.sessions[uploaded[0].session].vault == f"glacier://{parse_vault(url).name}"
    # whole-archive resume: no part events for Glacier
    assert not any(isinstance(r.event, ev.PartUploaded) for r in image.records)


def test_inspect_from_vault_starts_an_inventory_job_then_reconciles_it(
    backed_up: tuple[Path, str, Path], moto_glacier: tuple[str, Any]
) -> None:
    state, url, _ = backed_up
    vault = MotoGlacierVault(parse_vault(url))
    sd = StateDir.open(state)
    try:
        first = inventory.check(sd, vault)
        assert first.status == "started"
        assert sd.state.inventories[first.job].state == "requested"
        waits: list[str] = []
        done = inventory.check(
            sd, vault, wait=True, poll=0.5, on_wait=lambda r: waits.append(r.status)
        )
        assert done.status == "received" and done.job == first.job
        assert waits and set(waits) == {"running"}  # moto takes ~5 s: it waited
        st = sd.state
        uploaded = [a for a in st.archives.values() if a.state == "uploaded"]
        catalogs = [s.catalog for s in st.sessions.values() if s.catalog is not None]
        assert len(catalogs) == 1  # each session's manifest is an archive of its own
        assert done.archives == len(uploaded) + len(catalogs)
        assert done.missing == [] and done.unknown == []
        assert st.inventories[first.job].state == "received"
        # an archive of ours the log never recorded (a response lost at the end
        # of an upload) and one of someone else's
        sid = next(iter(st.sessions))
        _, client = moto_glacier
        for key in (f"archives/{sid}/{sid}-000099.tar.zst", "not/ours"):
            desc = json.dumps({"eventbak": 1, "key": key}, separators=(",", ":"))
            client.upload_archive(
                vaultName=vault.name, archiveDescription=desc, body=os.urandom(100 + len(key))
            )
        again = inventory.check(sd, vault, wait=True, poll=0.5)
        assert again.job != first.job
        assert sorted(u.ours for u in again.unknown) == [False, True]
    finally:
        vault.close()
        sd.close()
    # the descriptions name ids only, never a file of the tree
    inventory_text = json.dumps([u.description_key for u in again.unknown])
    assert ".txt" not in inventory_text and "photo" not in inventory_text


def test_from_vault_on_an_s3_vault_is_a_clear_usage_error(tmp_path: Path) -> None:
    sd = StateDir.open(tmp_path / "state")
    try:
        from eventbak.errors import UsageError
        from eventbak.vaults import open_vault

        with pytest.raises(UsageError, match="glacier://"):
            inventory.check(sd, open_vault("s3://bkp/x"))
    finally:
        sd.close()


def test_inspect_from_vault_command_starts_then_reports(
    backed_up: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """The CLI, as a subprocess (it only reads the vault: moto's receipts do not matter)."""
    import subprocess
    import sys

    state, url, _ = backed_up
    base = [sys.executable, "-m", "eventbak", "--state-dir", str(state), "inspect", "--from-vault"]
    first = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "inventory job" in first.stdout and "started" in first.stdout
    done = subprocess.run(
        [*base, "--wait", "--poll", "0.5", "--vault", url], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "0 in the log are missing from it, 0 in it are not in the log" in done.stdout
    st, _ = read_state(state)
    assert [i.state for i in st.inventories.values()] == ["received"]


def test_restore_from_glacier_runs_retrieval_jobs_and_waits(
    backed_up: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """`eventbak restore` as a subprocess: reading needs no tree-hash receipt, so
    eventbak's own GlacierVault talks to moto here."""
    import subprocess
    import sys

    from tests.treeutil import describe

    state, _, src = backed_up
    back = tmp_path / "back"
    done = subprocess.run(
        [sys.executable, "-m", "eventbak", "--state-dir", str(state), "restore", "--to",
         str(back), "--tier", "Expedited", "--poll", "0.5"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    st, _ = read_state(state)
    uploaded = [a for a in st.archives.values() if a.state == "uploaded"]
    # one retrieval job per archive, named in the output, waited for (moto: 2 s)
    started = done.stderr.count("started Glacier retrieval job")
    assert started == len(uploaded), done.stderr
    assert describe(back / str(src).lstrip("/")) == describe(src)


def test_recover_from_glacier_by_inventory_and_retrieval_jobs(
    backed_up: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """The state dir lost: `eventbak recover` finds the catalog archives by an
    inventory job and reads them by retrieval jobs (moto: seconds), and the
    recovered state dir restores the tree (retrieving the data archives)."""
    import shutil
    import subprocess
    import sys

    from tests.treeutil import describe

    state, url, src = backed_up
    before, _ = read_state(state)
    shutil.rmtree(state)
    fresh = tmp_path / "recovered"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eventbak", "--state-dir", str(fresh), *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    done = cli("recover", "--vault", url, "--tier", "Expedited", "--poll", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["sessions"] == list(before.sessions)
    assert "inventory job" in done.stderr and "1 catalog retrieval jobs" in done.stderr
    after, _ = read_state(fresh)
    (s,) = after.sessions.values()
    assert s.state == "completed"
    assert {a.key for a in after.archives.values()} == {
        a.key for a in before.archives.values() if a.state == "uploaded"
    }
    back = tmp_path / "back"
    done = cli("restore", "--to", str(back), "--tier", "Expedited", "--poll", "0.5")
    assert done.returncode == 0, done.stderr
    assert describe(back / str(src).lstrip("/")) == describe(src)
