"""PNG plots from the latest results in bench/results/ (matplotlib, the ``bench`` extra).

    .venv/bin/python bench/plots.py

scim-throughput.png and scim-p99.png (per phase, against concurrency, every system and
the hello-world ceiling), sync-lag.png (the initial sync's lag curve), scaling.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"create": 2000, "get": 4000, "patch": 1500}  # issue 3, at 32 concurrent clients
COLORS = {
    "provisio": "#1f77b4",
    "provisio-asyncio": "#9467bd",
    "baseline": "#2ca02c",
    "scim2-server": "#ff7f0e",
    "django-scim2": "#d62728",
}


def load(kind: str) -> dict[str, Any] | None:
    path = RESULTS / f"{kind}-latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def scim(data: dict[str, Any]) -> list[Path]:
    summary = data["summary"]
    phases = list(dict.fromkeys(k.split("@")[0] for k in summary["phases"]))
    concs = sorted({int(k.split("@")[1]) for k in summary["phases"]})
    systems = [s for s in COLORS if any(s in row for row in summary["phases"].values())]
    m = data["machine"]
    out = []
    for metric, label, name in (
        ("rps", "requests/s (median)", "scim-throughput.png"),
        ("p99_ms", "p99 latency, ms (median)", "scim-p99.png"),
    ):
        fig, axes = plt.subplots(1, len(phases), figsize=(4.2 * len(phases), 3.8), squeeze=False)
        for ax, phase in zip(axes[0], phases, strict=True):
            for system in systems:
                ys = [summary["phases"].get(f"{phase}@{c}", {}).get(system, {}).get(metric) for c in concs]
                pts = [(c, y) for c, y in zip(concs, ys, strict=True) if y is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=system, color=COLORS[system])
            if metric == "rps" and summary.get("hello"):
                hy = [summary["hello"].get(str(c), summary["hello"].get(c, {})).get("rps") for c in concs]
                pts = [(c, y) for c, y in zip(concs, hy, strict=True) if y]
                if pts:
                    ax.plot(*zip(*pts, strict=True), ls="--", color="grey", label="hello world (ceiling)")
            target = TARGETS.get(phase) if metric == "rps" else (40 if phase == "create" else None)
            if target:
                ax.axhline(target, color="black", ls=":", lw=1, label="target (32 clients)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(concs, [str(c) for c in concs])
            ax.set_yscale("log")
            ax.set_title(phase)
            ax.set_xlabel("concurrent clients")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel(label)
        axes[0][-1].legend(fontsize=8)
        fig.suptitle(
            f"SCIM {label.split(' (')[0]} — {m['nproc']} cores, {m['cpu_model']}, {m['date_utc']} UTC, "
            f"commit {m['git_commit']}",
            fontsize=9,
        )
        fig.tight_layout()
        path = RESULTS / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def sync(data: dict[str, Any]) -> Path:
    s = data["samples"]
    t = [x["t"] for x in s]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.plot(t, [x["commands_lag"] + x["commands_pending"] for x in s], label="command streams: lag + pending")
    ax.plot(t, [x["audit_lag"] + x["audit_pending"] for x in s], label="audit streams: lag + pending")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("entries not yet processed")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(t, [x["users"] for x in s], color="grey", ls="--", label="users in Postgres")
    ax2.plot(t, [x["memberships"] for x in s], color="black", ls=":", label="memberships in Postgres")
    ax2.set_ylabel("rows")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    a = data["args"]
    m = data["machine"]
    ax.set_title(
        f"Initial sync, {a['users']:,} users + {a['groups']:,} groups x {a['members']} members, "
        f"{a['concurrency']} clients — {m['date_utc']} UTC, commit {m['git_commit']}",
        fontsize=9,
    )
    fig.tight_layout()
    path = RESULTS / "sync-lag.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scaling(data: dict[str, Any]) -> Path:
    ks = sorted(int(k) for k in data["e2e"])
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = sorted({key for k in ks for key in data["e2e"][str(k)]})
    for key in keys:
        ax.plot(ks, [data["e2e"][str(k)].get(key, {}).get("rps") for k in ks], marker="o", label=f"SCIM {key}")
    if data.get("worker_only"):
        ax.plot(
            ks,
            [data["worker_only"][str(k)]["provisioner_per_s"] for k in ks],
            marker="s",
            ls="--",
            label="worker only (bench_provisioner)",
        )
    ax.set_xticks(ks)
    ax.set_xlabel("provisioner processes")
    ax.set_ylabel("per second (median)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    m = data["machine"]
    ax.set_title(f"Scaling with provisioner processes — {m['nproc']} cores, {m['date_utc']} UTC", fontsize=9)
    fig.tight_layout()
    path = RESULTS / "scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    made: list[Path] = []
    if (d := load("scim")) is not None:
        made += scim(d)
    if (d := load("sync")) is not None:
        made.append(sync(d))
    if (d := load("scaling")) is not None:
        made.append(scaling(d))
    for p in made:
        print(p.relative_to(RESULTS.parent.parent))
    if not made:
        print("no results in bench/results/", file=sys.stderr)


if __name__ == "__main__":
    main()
