import pytest

from auditor.settings import AuditorSettings
from provisio_lib.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit

BASE = {"database_url": "postgresql://u@h/db", "redis_url": "redis://h:6379/0"}


def test_defaults_match_the_documented_contract():
    s = load_settings(AuditorSettings, **BASE)
    assert s.health_port == 9102 and s.notify_window_s == 900 and s.smtp_tls is False and s.smtp_starttls is False


def test_tls_modes_are_exclusive_and_named():
    with pytest.raises(SettingsError) as err:
        load_settings(AuditorSettings, **BASE, smtp_tls=True, smtp_starttls=True)
    assert str(err.value).startswith("PROVISIO_SMTP_STARTTLS is invalid")


def test_smtp_auth_needs_user_and_password():
    with pytest.raises(SettingsError) as err:
        load_settings(AuditorSettings, **BASE, smtp_user="mailer")
    assert "PROVISIO_SMTP_PASSWORD" in str(err.value)
    s = load_settings(AuditorSettings, **BASE, smtp_user="mailer", smtp_password="pw")
    assert "pw" not in repr(s)


def test_bad_values_name_the_variable():
    with pytest.raises(SettingsError) as err:
        load_settings(AuditorSettings, **BASE, notify_window_s=0, smtp_from="not an address")
    assert "PROVISIO_NOTIFY_WINDOW_S is invalid" in str(err.value)
    assert "PROVISIO_SMTP_FROM is invalid" in str(err.value)
