"""The MINID of age trimming never passes what a consumer group has not read or not
acknowledged (libs/provisio_lib/streamtrim.py)."""

from __future__ import annotations

import pytest

from provisio_lib.streamtrim import safe_min_id

pytestmark = pytest.mark.unit

NOW = 1_000_000_000


def group(name, last):
    return {"name": name.encode(), "last-delivered-id": last.encode(), "pending": 0}


def test_old_processed_entries_go():
    assert safe_min_id(NOW, 300_000, [group("provisioner", f"{NOW}-5")], {}) == (NOW - 300_000, 0)


def test_never_past_the_last_delivered_entry():
    last = f"{NOW - 900_000}-3"
    # entries up to the last delivered one are acknowledged (none pending): they go, the next stays
    assert safe_min_id(NOW, 300_000, [group("provisioner", last)], {}) == (NOW - 900_000, 4)


def test_never_past_the_oldest_pending_entry():
    pending = {"provisioner": f"{NOW - 600_000}-1"}
    assert safe_min_id(NOW, 300_000, [group("provisioner", f"{NOW}-0")], pending) == (NOW - 600_000, 1)


def test_the_slowest_group_decides():
    groups = [group("provisioner", f"{NOW}-0"), group("auditor", f"{NOW - 700_000}-0")]
    assert safe_min_id(NOW, 300_000, groups, {}) == (NOW - 700_000, 1)


def test_nothing_is_trimmed_without_a_group_or_before_any_read():
    assert safe_min_id(NOW, 300_000, [], {}) is None
    assert safe_min_id(NOW, 300_000, [group("provisioner", "0-0")], {}) is None
