import json

import pytest
import structlog

from provisio_lib.logging import configure_logging, redact_url
from provisio_lib.settings import CommonSettings, SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_missing_and_malformed_settings_name_the_variable(monkeypatch):
    monkeypatch.delenv("PROVISIO_DATABASE_URL", raising=False)
    monkeypatch.setenv("PROVISIO_REDIS_URL", "http://nope")
    monkeypatch.setenv("PROVISIO_PARTITIONS", "many")
    with pytest.raises(SettingsError) as err:
        load_settings(CommonSettings)
    msg = str(err.value)
    assert "PROVISIO_DATABASE_URL is not set" in msg
    assert "PROVISIO_REDIS_URL is invalid" in msg
    assert "PROVISIO_PARTITIONS is invalid" in msg


def test_secrets_are_secret(monkeypatch):
    monkeypatch.setenv("PROVISIO_DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("PROVISIO_REDIS_URL", "redis://r:6379/0")
    s = load_settings(CommonSettings)
    assert "hunter2" not in repr(s)
    assert s.database_url.get_secret_value().endswith("@db/x")


def test_logs_are_json_and_never_carry_tokens_or_passwords(capsys):
    configure_logging("INFO", "json", service="test")
    structlog.contextvars.bind_contextvars(correlation_id="c-9")
    try:
        structlog.get_logger().info(
            "login", token="prv_secret", saml_response="<xml/>", url="postgresql://u:pw@h/db", user="alice"
        )
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["event"] == "login" and line["correlation_id"] == "c-9" and line["service"] == "test"
    assert line["token"] == "[redacted]" and line["saml_response"] == "[redacted]"
    assert "pw" not in line["url"] and line["user"] == "alice"


def test_redact_url():
    assert redact_url("redis://:pass@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("postgresql://host/db") == "postgresql://host/db"


def test_event_loop_is_uvloop_unless_asked_for_asyncio(monkeypatch):
    import asyncio

    import uvloop

    from provisio_lib.process import new_event_loop

    monkeypatch.setenv("PROVISIO_DATABASE_URL", "postgresql://u@db/x")
    monkeypatch.setenv("PROVISIO_REDIS_URL", "redis://r:6379/0")
    assert load_settings(CommonSettings).event_loop == "uvloop"
    monkeypatch.setenv("PROVISIO_EVENT_LOOP", "trio")
    with pytest.raises(SettingsError, match="PROVISIO_EVENT_LOOP is invalid"):
        load_settings(CommonSettings)
    for kind, uv in (("uvloop", True), ("asyncio", False)):
        loop = new_event_loop(kind)
        try:
            assert isinstance(loop, uvloop.Loop) is uv
            assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
        finally:
            loop.close()


def test_services_collect_garbage_rarely_and_not_what_start_up_made():
    import gc

    from provisio_lib.process import calm_gc

    before = gc.get_threshold()
    try:
        calm_gc()
        assert gc.get_threshold()[0] >= 10_000 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
