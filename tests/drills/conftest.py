"""Fixtures of the fault drills (see tests/drills/support.py and RELIABILITY.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .support import Processes


@pytest.fixture
async def procs(
    tmp_path: Path, service_env: dict[str, str], redis: Any, request: pytest.FixtureRequest
) -> AsyncIterator[Processes]:
    """Services as subprocesses on this test's database and Redis prefix; all ended at
    teardown (before the ``redis`` fixture deletes the prefix's keys, which it depends on).
    Their logs are printed when the drill fails."""
    p = Processes(tmp_path / "logs", dict(service_env))
    try:
        yield p
    finally:
        p.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(p.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
