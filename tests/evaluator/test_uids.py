"""Sandbox uid leases: exclusive while held, within the range, and not the same uid job after job."""

from __future__ import annotations

import pytest

from evaluator.sandbox import uids


@pytest.fixture()
def leases(tmp_path, monkeypatch):
    folder = tmp_path / "leases"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv(uids.LEASE_DIR_ENV, str(folder))
    return folder


def test_a_held_uid_is_never_leased_again(leases):
    with uids.lease_uid() as held:
        assert uids.UID_BASE <= held < uids.UID_BASE + uids.UID_COUNT
        others = []
        for _ in range(200):
            with uids.lease_uid() as uid:
                others.append(uid)
        with uids.lease_uid() as a, uids.lease_uid() as b:
            assert len({held, a, b}) == 3
    assert held not in others
    assert all(uids.UID_BASE <= uid < uids.UID_BASE + uids.UID_COUNT for uid in others)


def test_back_to_back_jobs_get_different_uids(leases):
    """A search from the lowest free uid hands one uid to every job in turn (whatever a job left
    keyed by its uid would be the next one's); from a random start, rarely."""
    seen = []
    for _ in range(20):
        with uids.lease_uid() as uid:
            seen.append(uid)
    repeats = sum(a == b for a, b in zip(seen[:-1], seen[1:], strict=True))
    assert repeats <= 2, seen


def test_the_last_free_uid_is_found_from_any_start(leases, monkeypatch):
    monkeypatch.setattr(uids, "UID_COUNT", 3)
    with uids.lease_uid() as a, uids.lease_uid() as b, uids.lease_uid() as c:
        assert {a, b, c} == {uids.UID_BASE, uids.UID_BASE + 1, uids.UID_BASE + 2}
        with pytest.raises(uids.NoFreeUidError), uids.lease_uid(wait=0):
            pass
