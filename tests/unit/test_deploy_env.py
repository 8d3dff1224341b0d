""".env.example lists every PROVISIO_ variable of every service, commented, with the
real defaults; the required ones are set."""

from __future__ import annotations

import re

import pytest
from pydantic import TypeAdapter

from .deploy_support import ROOT, SETTINGS_MODULES, all_service_vars, assert_settings_load, env_name, settings_class

pytestmark = pytest.mark.unit

ENV_EXAMPLE = ROOT / ".env.example"
LINE = re.compile(r"^(?P<comment>#\s*)?(?P<name>PROVISIO_[A-Z0-9_]+)=(?P<value>.*)$")
# Read by the CLI's dev command and the test fixtures, not by a settings class.
NOT_SETTINGS = {"PROVISIO_DEV_DIR", "PROVISIO_TEST_DATABASE_URL", "PROVISIO_TEST_REDIS_URL"}


def entries() -> list[tuple[str, str, bool, bool]]:
    """(name, value, set (uncommented), documented (a comment in its block))."""
    out = []
    block_has_comment = False
    for line in ENV_EXAMPLE.read_text().splitlines():
        if not line.strip():
            block_has_comment = False
            continue
        m = LINE.match(line)
        if m:
            out.append((m["name"], m["value"], m["comment"] is None, block_has_comment))
        elif line.startswith("#") and not line.startswith("# ==="):
            block_has_comment = True
    return out


def test_every_variable_is_listed_once_and_documented():
    listed = [name for name, *_ in entries()]
    assert len(listed) == len(set(listed)), "a variable is listed twice"
    expected = set().union(*all_service_vars().values())
    missing = expected - set(listed)
    assert not missing, f".env.example lacks {sorted(missing)}"
    unknown = set(listed) - expected - NOT_SETTINGS
    assert not unknown, f".env.example lists {sorted(unknown)}, which no service reads"
    undocumented = [name for name, _v, _s, documented in entries() if not documented]
    assert not undocumented, f"no comment explains {undocumented}"


def test_required_variables_are_set_and_load():
    values = {name: value for name, value, is_set, _ in entries() if is_set}
    for service in SETTINGS_MODULES:
        assert_settings_load(service, values, ".env.example", strict=False)


def test_commented_values_are_the_real_defaults():
    """A commented line shows the default some service really has (or an example URL)."""
    fields = {}
    for service in SETTINGS_MODULES:
        cls = settings_class(service)
        for field, info in cls.model_fields.items():
            fields.setdefault(env_name(cls, field), []).append(info)
    for name, value, is_set, _ in entries():
        if is_set or name in NOT_SETTINGS:
            continue
        infos = fields[name]
        if any(info.default is None for info in infos) and (value == "" or "example" in value):
            continue  # optional without default: empty, or an example of the shape
        parsed = []
        for info in infos:
            try:
                parsed.append(TypeAdapter(info.annotation).validate_python(value, strict=False))
            except Exception:
                parsed.append(object())
        assert any(p == info.default for p, info in zip(parsed, infos, strict=True)), (
            f".env.example shows {name}={value}, but the default is {' / '.join(repr(i.default) for i in infos)}"
        )
