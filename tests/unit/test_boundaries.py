"""The structure stays easy to see: services never import each other, libs never import
services, and the pure modules never touch I/O libraries."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["scim_gateway", "saml_gateway", "provisioner", "auditor", "app_api", "webhook_dispatcher"]
IO_LIBS = {"aiohttp", "asyncpg", "redis", "faststream", "saml2", "aiosmtplib", "xmlsec"}
# Modules that hold pure rules: tested without I/O, so they must not import it.
PURE = [
    "services/provisioner/domain.py",
    "services/provisioner/events.py",
    "services/scim_gateway/patch.py",
    "services/scim_gateway/filters.py",
    "services/scim_gateway/resources.py",
    "services/scim_gateway/schema.py",
    "services/scim_gateway/errors.py",
    "services/auditor/digest.py",
    "libs/provisio_lib/contract.py",
    "libs/provisio_lib/topology.py",
    "libs/provisio_lib/scim_extensions.py",
    "libs/provisio_lib/names.py",
    "libs/provisio_lib/webhooks.py",
    "libs/provisio_lib/netguard.py",
    "libs/provisio_lib/directory/layout.py",
    "libs/provisio_lib/directory/mapping.py",
]


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service):
    others = set(SERVICES) - {service}
    for path in (ROOT / "services" / service).rglob("*.py"):
        bad = imported_packages(path) & others
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_libs_never_import_services_or_the_cli():
    for path in (ROOT / "libs").rglob("*.py"):
        bad = imported_packages(path) & {*SERVICES, "provisio_cli"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module):
    path = ROOT / module
    if not path.exists():
        pytest.fail(f"{module} is listed as pure but does not exist; update PURE")
    bad = imported_packages(path) & IO_LIBS
    assert not bad, f"{module} imports I/O libraries {sorted(bad)}"


def test_the_example_receiver_stands_alone():
    """examples/receiver is code an application copies: the standard library, aiohttp,
    asyncpg and standardwebhooks only; nothing of Provisio, and nothing imports it."""
    import sys

    allowed = {"aiohttp", "asyncpg", "standardwebhooks", "__future__", *sys.stdlib_module_names}
    for path in (ROOT / "examples").rglob("*.py"):
        bad = imported_packages(path) - allowed
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    for top in ("libs", "services"):
        for path in (ROOT / top).rglob("*.py"):
            assert "examples" not in imported_packages(path), path
