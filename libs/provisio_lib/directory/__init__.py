"""The directory read model: how every reader reads a tenant's users and groups.

One package knows the layout of the ``users``, ``groups`` and ``memberships`` tables,
so that the SCIM gateway, the App API, the CLI and the console (and any new reader)
show the same resource and a change of a column is made in one place:

- ``layout``: the tables' read columns (named as ``UserState``/``GroupState`` fields),
  the subqueries of a user's groups and a group's member count, and the ``EXISTS``
  over ``memberships`` a filter needs (pure: SQL text);
- ``reads``: the queries, each scoped to a tenant id it requires: one user or group, a
  user's groups and memberships, groups' members, keyset pages (the App API), and the
  SQL of a filtered page for a reader's own condition (the SCIM gateway compiles its
  filters over ``layout``'s columns);
- ``mapping``: the one row → ``UserState``/``GroupState`` mapping (the provisioner's
  outcomes and events use it too) and the App API's JSON on top of it.

Renderers of other representations stay with their service (the SCIM resource in
``scim_gateway.resources``, the operator's view in ``admin.audit``) and read the rows by
the same field names.
"""

from .layout import GROUPS, TABLES, USERS, Table
from .mapping import group_json, group_state, user_json, user_state
from .reads import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    CursorError,
    Page,
    count_sql,
    decode_cursor,
    encode_cursor,
    find_user,
    get_group,
    get_user,
    group_members,
    groups_page,
    lookup_sql,
    members_page,
    page_sql,
    user_groups,
    user_memberships,
    users_page,
)

__all__ = [
    "DEFAULT_LIMIT",
    "GROUPS",
    "MAX_LIMIT",
    "TABLES",
    "USERS",
    "CursorError",
    "Page",
    "Table",
    "count_sql",
    "decode_cursor",
    "encode_cursor",
    "find_user",
    "get_group",
    "get_user",
    "group_json",
    "group_members",
    "group_state",
    "groups_page",
    "lookup_sql",
    "members_page",
    "page_sql",
    "user_groups",
    "user_json",
    "user_memberships",
    "user_state",
    "users_page",
]
