"""FastStream is used through its public API only (issue 15): names its packages export,
never ``faststream._internal`` or a private attribute of its objects, so an upgrade of
the pinned version breaks loudly at import or in its own changelog, not silently."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    p for d in ("libs", "services", "tests", "bench") for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts
]
# Names the code gives FastStream's objects (broker, app, subscribers, messages).
FASTSTREAM_OBJECTS = {"broker", "app", "message", "msg", "subscriber", "reader", "claimer", "faststream"}


def _faststream_files() -> list[Path]:
    return [p for p in SOURCES if "faststream" in p.read_text(encoding="utf-8")]


def _public(module: str, name: str | None) -> str | None:
    """Why ``from module import name`` (or ``import module``) is not public API, or None."""
    if any(part.startswith("_") for part in module.split(".")):
        return f"{module} is a private module"
    if name is None:
        return None
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    if name.startswith("_"):
        return f"{module}.{name} is private"
    if exported is not None and name not in exported and not importlib.util.find_spec(f"{module}.{name}"):
        return f"{module}.{name} is not in {module}.__all__"
    return None


def test_the_scan_sees_the_workers() -> None:
    names = {p.name for p in _faststream_files()}
    assert {"delivery.py", "asyncapi.py", "app.py"} <= names


def test_only_public_faststream_names_are_imported() -> None:
    problems = []
    for path in _faststream_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "faststream":
                for alias in node.names:
                    if (why := _public(node.module, alias.name)) is not None:
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {why}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "faststream" and (why := _public(alias.name, None)):
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {why}")
    assert not problems, "\n".join(problems)


def test_no_private_attribute_of_faststream_objects_is_touched() -> None:
    problems = []
    for path in _faststream_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in FASTSTREAM_OBJECTS
            ):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not problems, "\n".join(problems)
