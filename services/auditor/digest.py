"""What goes in a failure mail. Pure: rows in, subject and text out.

Two kinds of mail per tenant and window (``notify_window_s``, default 15 minutes):

- ``first``: the failure that opened the window, mailed at once, so an operator hears
  about a broken provisioning set-up before the customer does (Entra ID's "send an
  email notification when a failure occurs");
- ``digest``: every further failure of the window in one mail when the window ends:
  how many, which operations and users, the errors grouped by cause with what to do,
  and the correlation ids to search for.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

# The advice per error code is shared with the web console's user page.
from provisio_lib.admin.advice import ADVICE, DEFAULT_ADVICE

Kind = Literal["first", "digest"]


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed outcome, as stored in audit_log."""

    audit_id: int
    completed_at: datetime
    operation: str
    source_label: str
    user_name: str | None
    resource_id: uuid.UUID | None
    error_code: str | None
    error_message: str | None
    correlation_id: str


@dataclass(frozen=True, slots=True)
class Cause:
    code: str
    count: int
    messages: tuple[tuple[str, int], ...]  # distinct messages, most frequent first
    advice: str


@dataclass(frozen=True, slots=True)
class Mail:
    subject: str
    text: str


def group_causes(failures: Sequence[Failure], max_messages: int = 3) -> list[Cause]:
    """Errors grouped by error code, largest group first; a few distinct messages each."""
    by_code: dict[str, list[Failure]] = {}
    for f in failures:
        by_code.setdefault(f.error_code or "unknown", []).append(f)
    causes = []
    for code, items in by_code.items():
        messages = Counter((f.error_message or "(no message)") for f in items)
        causes.append(
            Cause(
                code=code,
                count=len(items),
                messages=tuple(messages.most_common(max_messages)),
                advice=ADVICE.get(code, DEFAULT_ADVICE),
            )
        )
    causes.sort(key=lambda c: (-c.count, c.code))
    return causes


def _duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _listed(items: Sequence[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def compose(
    *,
    tenant: str,
    kind: Kind,
    failures: Sequence[Failure],
    window_start: datetime,
    window_end: datetime,
    total: int | None = None,
    max_listed: int = 20,
) -> Mail:
    """The mail for one notification. ``failures`` oldest first; ``total`` counts failures
    beyond those passed (a huge digest lists a sample, but says how many there were)."""
    if not failures:
        raise ValueError("a notification needs at least one failure")
    total = max(total or 0, len(failures))
    window = _duration((window_end - window_start).total_seconds())
    first = failures[0]
    if kind == "first":
        who = f" for {first.user_name}" if first.user_name else ""
        subject = f"[Provisio] {tenant}: provisioning failed: {first.operation}{who} ({first.error_code or 'error'})"
        if total > 1:
            subject = f"[Provisio] {tenant}: {total} provisioning failures ({first.error_code or 'error'} …)"
        intro = (
            f"Provisioning failed for tenant {tenant}. This is the first failure since "
            f"{_when(window_start)}; further failures until {_when(window_end)} are collected into one "
            f"digest mail sent then (no mail per failure)."
        )
    else:
        subject = (
            f"[Provisio] {tenant}: {total} more provisioning failure{'s' if total != 1 else ''} in the last {window}"
        )
        intro = (
            f"{total} further provisioning failure{'s' if total != 1 else ''} for tenant {tenant} between "
            f"{_when(window_start)} and {_when(window_end)}, after the one already reported."
        )

    operations = Counter(f.operation for f in failures)
    users = list(dict.fromkeys(f.user_name for f in failures if f.user_name))
    sources = list(dict.fromkeys(f.source_label for f in failures if f.source_label))
    correlation_ids = list(dict.fromkeys(f.correlation_id for f in failures))

    lines = [intro, ""]
    lines.append(f"Failures: {total}" + (f" (the first {len(failures)} listed)" if total > len(failures) else ""))
    lines.append("Operations: " + ", ".join(f"{op} × {n}" for op, n in operations.most_common()))
    if users:
        lines.append(f"Users ({len(users)}): " + _listed(users, max_listed))
    if sources:
        lines.append("Sources: " + _listed(sources, max_listed))
    lines += ["", "Errors by cause:"]
    for cause in group_causes(failures):
        lines.append(f"- {cause.code} × {cause.count}")
        for message, n in cause.messages:
            lines.append(f"    {message}" + (f"  (× {n})" if n > 1 else ""))
        lines.append(f"  What to do: {cause.advice}")
    lines += ["", "Correlation ids (search the audit trail with them):"]
    for cid in correlation_ids[:max_listed]:
        lines.append(f"- {cid}")
    if len(correlation_ids) > max_listed:
        lines.append(f"- … and {len(correlation_ids) - max_listed} more")
    since = (window_start - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines += [
        "",
        "What to do next:",
        f"- Every attempt in full: provisio audit search --tenant {tenant} --failed --since {since}",
        f"- One user's history: provisio audit user {tenant} USERNAME",
        "- Fix the cause in the IdP or the tenant's settings; the IdP retries on its next cycle "
        "(Entra ID about every 40 minutes).",
        "",
        f"You receive this because this address is set for tenant {tenant} "
        f"(provisio tenant notify {tenant} --email ...).",
    ]
    return Mail(subject=subject, text="\n".join(lines) + "\n")
