"""Row → state: the one mapping of a users or groups row (pure, no I/O).

A row of the read model's SELECTs (``layout.user_columns`` / ``group_columns``) has the
fields of ``UserState`` / ``GroupState`` under the same names; ``user_state`` and
``group_state`` make the contract's models from it (the provisioner's outcomes and
events, the App API). Renderers of other representations read the same row by the same
names (the SCIM gateway's ``render_user`` takes a row or ``UserState.model_dump()``
alike), so none of them knows the table's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from provisio_lib.contract import GroupState, UserState


def user_state(row: Any, groups: Sequence[Any] = ()) -> UserState:
    """A users row as ``UserState``; ``groups`` as ``UserState.groups`` takes them
    (``{"id", "display_name"}`` each, as ``layout.groups_of`` reads them)."""
    return UserState(
        id=row["id"],
        user_name=row["user_name"],
        external_id=row["external_id"],
        active=row["active"],
        display_name=row["display_name"],
        given_name=row["given_name"],
        family_name=row["family_name"],
        emails=tuple(row["emails"] or ()),
        sso_name=row["sso_name"],
        attributes=row["attributes"] or {},
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        created_by=row["created_by"],
        groups=tuple(groups),
    )


def group_state(row: Any) -> GroupState:
    """A groups row as ``GroupState``."""
    return GroupState(
        id=row["id"],
        display_name=row["display_name"],
        external_id=row["external_id"],
        attributes=row["attributes"] or {},
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        created_by=row["created_by"],
    )


# --------------------------------------------------------------------------- App API JSON


def user_json(row: Any) -> dict[str, Any]:
    """The App API's user: ``UserState`` (with the row's ``groups``) as JSON."""
    return user_state(row, row["groups"] or ()).model_dump(mode="json")


def group_json(row: Any) -> dict[str, Any]:
    """The App API's group: ``GroupState`` as JSON plus ``member_count``."""
    return {**group_state(row).model_dump(mode="json"), "member_count": row["member_count"]}
