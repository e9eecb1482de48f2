"""The upload plan (core/plan.py): the next step from the folded state and what
the vault reported, checked without vaults, threads or disks."""

from __future__ import annotations

import msgspec

from eventbak.core import events as ev
from eventbak.core import plan
from eventbak.core.state import State, fold
from eventbak.vaults.base import Held, Part
from tests.eventsamples import member, opened, part_uploaded, sealed, upload_started

MIB = 1 << 20


def _state(*extra: ev.Event, size_mib: int = 0) -> State:
    seal = sealed("a", [member(b"/f", size=3)])
    if size_mib:
        seal = msgspec.structs.replace(seal, size=size_mib * MIB)
    started = ev.ArchiveStarted(at=1.0, session="s", archive="a", index=1)
    return fold([opened("s"), started, seal, *extra])


def _no_checksum(parts: list[Part]) -> str:
    return ""


def step(
    s: State, obs: plan.Observed, part_size: int | None = 5 * MIB, goal: plan.Goal = "upload"
) -> plan.Step:
    return plan.next_step(s.archives["a"], obs, part_size, _no_checksum, goal)


def test_a_fresh_archive_no_larger_than_a_part_goes_in_one_put() -> None:
    assert step(_state(size_mib=5), plan.Observed.fresh()) == plan.Put()
    assert step(_state(size_mib=50), plan.Observed.fresh(), part_size=None) == plan.Put()


def test_a_fresh_archive_larger_than_a_part_begins_a_multipart_upload() -> None:
    assert step(_state(size_mib=6), plan.Observed.fresh()) == plan.Begin(5 * MIB)


def test_part_size_grows_so_that_no_upload_needs_more_than_10000_parts() -> None:
    assert plan.part_size_for(100 * MIB, 5 * MIB) == 5 * MIB
    grown = plan.part_size_for(200_000 * MIB, 16 * MIB)
    assert grown % MIB == 0 and grown * 10_000 >= 200_000 * MIB and grown == 20 * MIB


def test_after_an_interruption_an_uploading_archive_asks_the_vault_first() -> None:
    s = _state(upload_started("a"), size_mib=12)
    assert step(s, plan.Observed()) == plan.Head()


def test_an_archive_the_vault_holds_whole_is_adopted_not_sent_again() -> None:
    s = _state(upload_started("a"), size_mib=12)
    held = Held(12 * MIB, "", "DEEP_ARCHIVE", "frozen")
    assert step(s, plan.Observed(head=True, held=held)) == plan.Adopt(held)


def test_a_different_object_under_the_key_is_not_adopted() -> None:
    s = _state(upload_started("a"), size_mib=12)
    obs = plan.Observed(head=True, held=Held(3, ""), staged="ok")
    assert step(s, obs) == plan.ListParts("up-a")


def test_staged_bytes_are_checked_before_anything_is_sent_after_a_crash() -> None:
    s = _state(upload_started("a"), size_mib=12)
    assert step(s, plan.Observed(head=True)) == plan.CheckStaged()
    damaged = plan.Observed(head=True, staged="damaged")
    assert step(s, damaged) == plan.Abort("up-a")


def test_only_the_parts_the_vault_lacks_are_sent_and_unlogged_ones_are_adopted() -> None:
    # 17 MiB in 5 MiB parts: 1, 2, 3 of 5 MiB and 4 of 2 MiB. The log has 1 and 2;
    # the vault has 1 and 3 (3 was sent just before a crash, 2 was lost).
    s = _state(upload_started("a"), part_uploaded("a", 1), part_uploaded("a", 2), size_mib=17)
    vault_parts = [Part(1, 5 * MIB, "q83vEjRWeJA="), Part(3, 5 * MIB, "x")]
    obs = plan.Observed(head=True, staged="ok", parts=True, vault_parts=vault_parts)
    got = step(s, obs)
    assert isinstance(got, plan.SendParts)
    assert [r.number for r in got.ranges] == [2, 4]
    assert [r.length for r in got.ranges] == [5 * MIB, 2 * MIB]
    assert [p.number for p in got.adopt] == [3]


def test_an_unlogged_part_listed_without_a_checksum_is_sent_again() -> None:
    s = _state(upload_started("a"), part_uploaded("a", 1), size_mib=11)
    vault_parts = [Part(1, 5 * MIB, ""), Part(2, 5 * MIB, ""), Part(3, MIB, "")]
    obs = plan.Observed(head=True, staged="ok", parts=True, vault_parts=vault_parts)
    got = step(s, obs)
    assert isinstance(got, plan.SendParts)
    assert [r.number for r in got.ranges] == [2, 3] and got.adopt == ()


def test_completion_uses_the_logged_checksums_when_the_listing_has_none() -> None:
    s = _state(upload_started("a"), part_uploaded("a", 1), size_mib=5)
    obs = plan.Observed(
        head=True, staged="ok", parts=True, vault_parts=[Part(1, 5 * MIB, "", '"e1"')]
    )
    got = step(s, obs)
    assert isinstance(got, plan.Complete)
    assert got.parts == (Part(1, 5 * MIB, "q83vEjRWeJA=", '"e"'),)


def test_a_part_whose_checksum_disagrees_with_the_log_is_sent_again() -> None:
    s = _state(upload_started("a"), part_uploaded("a", 1), size_mib=6)
    vault_parts = [Part(1, 5 * MIB, "something else"), Part(2, MIB, "y")]
    obs = plan.Observed(head=True, staged="ok", parts=True, vault_parts=vault_parts)
    got = step(s, obs)
    assert isinstance(got, plan.SendParts) and [r.number for r in got.ranges] == [1]


def test_all_parts_held_completes() -> None:
    s = _state(upload_started("a"), part_uploaded("a", 1), size_mib=6)
    vault_parts = [Part(1, 5 * MIB, "q83vEjRWeJA="), Part(2, MIB, "y")]
    obs = plan.Observed(head=True, staged="ok", parts=True, vault_parts=vault_parts)
    got = step(s, obs)
    assert isinstance(got, plan.Complete) and [p.number for p in got.parts] == [1, 2]


def test_an_upload_id_the_vault_forgot_is_recorded_lost() -> None:
    s = _state(upload_started("a"), part_uploaded("a", 1), size_mib=6)
    obs = plan.Observed(head=True, staged="ok", parts=True, vault_parts=None)
    assert isinstance(step(s, obs), plan.Forget)


def test_settling_records_what_the_vault_holds_and_aborts_the_rest() -> None:
    s = _state(upload_started("a"), size_mib=6)
    assert step(s, plan.Observed(), goal="settle") == plan.Head()
    assert step(s, plan.Observed(head=True), goal="settle") == plan.Abort("up-a")
    sealed_only = _state(size_mib=6)
    assert step(sealed_only, plan.Observed(), goal="settle") == plan.Discard("session abandoned")


def test_a_one_part_upload_cut_short_is_sent_again_without_a_new_start() -> None:
    s = _state(upload_started("a", multipart=False), size_mib=2)
    obs = plan.Observed(head=True, held=None, staged="ok")
    assert step(s, obs, part_size=None) == plan.Put(again=True)
