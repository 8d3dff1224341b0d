"""What the deploy tests need to know about the services: their settings classes, the
environment variables those read, which are required and which are secret."""

from __future__ import annotations

import importlib
import os
import re
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

from provisio_lib.settings import ENV_PREFIX, CommonSettings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]

# Container/deployment name -> module holding its settings class. "migrate" is the CLI.
SETTINGS_MODULES = {
    "scim": "scim_gateway.settings",
    "saml": "saml_gateway.settings",
    "provisioner": "provisioner.settings",
    "auditor": "auditor.settings",
    "app-api": "app_api.settings",
    "console": "console.settings",
    "webhook-dispatcher": "webhook_dispatcher.settings",
    "migrate": "provisio_cli.context",
}
# Ports the operators rely on (PREAMBLE "Interfaces already fixed").
SERVICE_PORTS = {
    "scim": 8081,
    "saml": 8082,
    "app-api": 8083,
    "provisioner": 9101,
    "auditor": 9102,
    "console": 8084,
    "webhook-dispatcher": 9103,
}
# Where Prometheus scrapes /metrics: the gateways' operator listeners, not their public
# ports (issue 13 §5); the workers' health ports.
METRICS_PORTS = {
    "scim": 9181,
    "saml": 9182,
    "app-api": 9183,
    "provisioner": 9101,
    "auditor": 9102,
    "console": 8084,
    "webhook-dispatcher": 9103,
}
COMMANDS = {
    "scim": ["serve", "scim"],
    "saml": ["serve", "saml"],
    "provisioner": ["work", "provisioner"],
    "auditor": ["work", "auditor"],
    "app-api": ["serve", "app-api"],
    "console": ["serve", "console"],
    "webhook-dispatcher": ["work", "webhook-dispatcher"],
    "migrate": ["migrate"],
}


def settings_class(service: str) -> type[CommonSettings]:
    """The one CommonSettings subclass defined in the service's settings module."""
    module_name = SETTINGS_MODULES[service]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            pytest.fail(
                f"{module_name} does not exist yet, so the {service!r} service's settings cannot "
                "be checked against the deploy files (services/*/settings.py must define one "
                "CommonSettings subclass)",
                pytrace=False,
            )
        raise
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, CommonSettings) and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        pytest.fail(f"{module_name} must define exactly one CommonSettings subclass, found {found}", pytrace=False)
    return found[0]


def env_names(cls: type[BaseSettings], field: str) -> list[str]:
    """Every name the field is read from, the preferred first (a worker's own name, then
    the older shared one: provisio_lib.settings.worker_setting)."""
    info = cls.model_fields[field]
    alias = info.validation_alias or info.alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        return [str(choice).upper() for choice in alias.choices]
    return [f"{cls.model_config.get('env_prefix', '')}{field}".upper()]


def env_name(cls: type[BaseSettings], field: str) -> str:
    return env_names(cls, field)[0]


def env_vars(cls: type[BaseSettings]) -> set[str]:
    return {env_name(cls, f) for f in cls.model_fields}


def accepted_vars(cls: type[BaseSettings]) -> set[str]:
    """env_vars and the older names still read (deploy files may use either)."""
    return {name for f in cls.model_fields for name in env_names(cls, f)}


def required_vars(cls: type[BaseSettings]) -> set[str]:
    return {env_name(cls, f) for f, info in cls.model_fields.items() if info.is_required()}


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret(a) for a in typing.get_args(annotation))


def secret_vars(cls: type[BaseSettings]) -> set[str]:
    return {env_name(cls, f) for f, info in cls.model_fields.items() if _is_secret(info.annotation)}


def all_service_vars() -> dict[str, set[str]]:
    return {service: env_vars(settings_class(service)) for service in SETTINGS_MODULES}


@contextmanager
def only_env(values: Mapping[str, str]) -> Iterator[None]:
    """Run with exactly these PROVISIO_ variables in the environment."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    for k in saved:
        del os.environ[k]
    os.environ.update({k: v for k, v in values.items() if k.startswith(ENV_PREFIX)})
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            del os.environ[k]
        os.environ.update(saved)


def assert_settings_load(service: str, env: Mapping[str, str], where: str, *, strict: bool = True) -> Any:
    """The service's settings validate with exactly ``env`` (what the container gets).

    ``strict``: every PROVISIO_ variable given must be one the service reads (catches
    typos, which pydantic-settings would silently ignore). Off where one shared
    ConfigMap feeds every service; that file is checked against all services instead.
    """
    cls = settings_class(service)
    missing = required_vars(cls) - set(env)
    assert not missing, f"{where}: {service} needs {sorted(missing)}"
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - accepted_vars(cls)
    assert not strict or not unknown, (
        f"{where}: {service} is given {sorted(unknown)}, which its settings do not read (typo?)"
    )
    with only_env(env):
        try:
            return load_settings(cls)
        except SettingsError as err:
            pytest.fail(f"{where}: {service} settings refuse this environment: {err}", pytrace=False)


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose-style ${VAR:-default} with an empty environment (what `up` does on a fresh host)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)
