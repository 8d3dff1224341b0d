"""deploy/Dockerfile, checked statically (no Docker engine runs here to build it)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from .deploy_support import METRICS_PORTS, ROOT, SERVICE_PORTS

pytestmark = pytest.mark.unit

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


@dataclass
class Instruction:
    op: str
    args: str
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined (comments dropped)."""
    out: list[Instruction] = []
    stage = -1
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        op, _, args = buffer.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
        out.append(Instruction(op, args.strip(), stage))
        buffer = ""
    assert not buffer, "Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def test_multi_stage_from_python_311_slim(instructions):
    args = {
        m.group(1): m.group(2) for i in instructions if i.op == "ARG" for m in [re.match(r"(\w+)=(\S+)", i.args)] if m
    }
    froms = [i.args for i in instructions if i.op == "FROM"]
    assert len(froms) >= 2
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.split()[0]) for f in froms]
    assert all(img.startswith("python:3.11-slim") for img in images), images
    assert froms[0].split()[-1] == "builder"
    copies = [i.args for i in final_stage(instructions) if i.op == "COPY"]
    assert any(c.startswith("--from=builder") for c in copies)


def test_runtime_has_xmlsec1_and_no_compilers(instructions):
    runtime_runs = " ".join(i.args for i in final_stage(instructions) if i.op == "RUN")
    packages = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", runtime_runs.split("apt-get install", 1)[1].split("&&")[0]))
    assert {"xmlsec1", "libxmlsec1-openssl"} <= packages
    for compiler in ("build-essential", "gcc", "g++", "make", "-dev"):
        assert not any(compiler in p for p in packages), f"runtime installs {compiler}"
    assert "--no-install-recommends" in runtime_runs
    assert "rm -rf /var/lib/apt/lists/*" in runtime_runs


def test_builder_installs_the_lock_then_provisio_without_resolving(instructions):
    """The image runs what the tests ran: the locked set with hashes checked, then the
    project with --no-deps (nothing resolved again at build time)."""
    runs = [i.args for i in instructions if i.op == "RUN" and i.stage == 0]
    [lock_run] = [r for r in runs if "-r requirements.lock" in r]
    assert "--require-hashes" in lock_run
    [project_run] = [r for r in runs if re.search(r"pip install --no-deps \.(\s|$)", r)]
    assert "pip check" in project_run
    assert runs.index(lock_run) < runs.index(project_run)
    copies = [shlex.split(i.args) for i in instructions if i.op == "COPY" and i.stage == 0]
    assert any("requirements.lock" in c[:-1] for c in copies)
    assert not any(re.search(r"pip install (-e )?\.(\[|\s|$)", r) for r in runs), "an install that resolves again"


def _pins(path: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, hashes) of a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[str, set[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            name = m.group(1).lower().replace("_", "-")
            pins[name] = (m.group(2), set())
        elif name and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[name][1].add(h.group(1))
    return pins


def test_lock_files_pin_every_dependency_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, full = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements-dev.lock")
    assert runtime and all(hashes for _v, hashes in runtime.values())
    assert all(hashes for _v, hashes in full.values())
    extras = project["optional-dependencies"]
    wanted = {
        "runtime": project["dependencies"],
        "full": project["dependencies"] + extras["dev"] + extras["test"] + extras["lint"],
    }
    for which, lock in (("runtime", runtime), ("full", full)):
        for req in wanted[which]:
            m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^]]*\])?==([^;\s]+)", req)
            if not m:
                continue  # provisio[dev] (itself) or an unpinned tool
            name = m.group(1).lower().replace("_", "-")
            assert lock.get(name, ("missing",))[0] == m.group(3), f"{which} lock: {name} is not {m.group(3)}"
    # The image's versions are the tested ones.
    for name, (version, _h) in runtime.items():
        assert full[name][0] == version, f"{name}: {version} in requirements.lock, {full[name][0]} in the dev lock"
    assert not any(n == "provisio" or n.startswith("provisio @") for n in full)


def test_no_dependency_declared_twice_or_unused():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.match(r"^[A-Za-z0-9_.-]+", d).group(0).lower() for d in deps]
    assert len(names) == len(set(names)), names
    assert "hiredis" not in names  # comes with redis[hiredis]
    assert "scim2-filter-parser" not in names  # nothing imports it (the filter parser is our own)
    sources = [p.read_text() for folder in ("libs", "services") for p in (ROOT / folder).rglob("*.py")]
    assert not any("scim2_filter_parser" in s for s in sources)


def test_runs_as_a_numeric_non_root_user(instructions):
    users = [i.args for i in final_stage(instructions) if i.op == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be numeric (runAsNonRoot) and not root"
    ops = [i.op for i in final_stage(instructions)]
    # Nothing after USER runs as root again, and the entrypoint runs as that user.
    assert ops.index("USER") < ops.index("ENTRYPOINT")
    assert "RUN" not in ops[ops.index("USER") :]


def test_entrypoint_is_the_provisio_script(instructions):
    [entrypoint] = [json.loads(i.args) for i in final_stage(instructions) if i.op == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    assert scripts[entrypoint[0]] == "provisio_cli.main:run"
    # The CLI has the commands compose and Kubernetes run: serve, work, migrate.
    from provisio_cli.main import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"serve", "work", "migrate"} <= names


def test_health_check_and_ports(instructions):
    stage = final_stage(instructions)
    [check] = [i.args for i in stage if i.op == "HEALTHCHECK"]
    assert "/healthz" in check
    exposed = {int(p) for i in stage if i.op == "EXPOSE" for p in i.args.split()}
    assert exposed == set(SERVICE_PORTS.values()) | set(METRICS_PORTS.values())
    for port in SERVICE_PORTS.values():
        assert str(port) in check


def test_copied_sources_exist_and_every_service_is_packaged(instructions):
    for i in instructions:
        if i.op == "COPY" and not i.args.startswith("--from"):
            *sources, _dest = shlex.split(i.args)
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "packages"
    ]
    for folder in sorted((ROOT / "services").iterdir()):
        if (folder / "__init__.py").exists():
            assert f"services/{folder.name}" in packages, f"{folder.name} is not in the wheel, so not in the image"


def test_dockerignore_keeps_local_state_out():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".provisio", ".env"} <= ignored
    # What the Dockerfile copies must not be ignored.
    for needed in ("libs", "services", "pyproject.toml", "README.md"):
        assert needed not in ignored
