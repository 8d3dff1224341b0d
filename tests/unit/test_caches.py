"""The in-process caches keep what is in use when they are full: the least recently
used entry goes, never the whole cache (a burst of rare keys used to empty them)."""

from __future__ import annotations

import pytest

from scim_gateway.patch import _parse_path
from scim_gateway.schema import user_kind

pytestmark = pytest.mark.unit


def test_a_common_patch_path_survives_a_burst_of_rare_ones() -> None:
    kind = user_kind()
    common = _parse_path(kind, "name.givenName")
    for i in range(3000):
        _parse_path(kind, f'emails[type eq "t{i}"].value')
        if i % 100 == 0:
            assert _parse_path(kind, "name.givenName") is common
    assert _parse_path(kind, "name.givenName") is common
