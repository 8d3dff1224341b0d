"""The users, groups and memberships tables as the read model reads them (pure: SQL
text only, no I/O).

The one place a reader learns column names and joins: the SELECT lists of the reads,
the subquery of a user's groups, and the EXISTS over ``memberships`` a filter uses.
A column a resource field is stored in is named like the field of ``UserState`` /
``GroupState`` (``user_name``, ``given_name``, …), so a row of these SELECTs *is* the
state, and ``Table.col`` refuses a name the table does not have.

Tenant scoping: every read query takes the tenant id as a parameter and filters the
outer row on it; the subqueries here are correlated to that row and repeat its
``tenant_id`` on the rows they join (the foreign keys are on ids alone, so a
membership linking two tenants would otherwise show another tenant's group).
"""

from __future__ import annotations

from dataclasses import dataclass

# The read columns of each table, in SELECT order. ``email`` is the stored primary email
# (a lookup key, derived from ``emails`` on write); the rest are UserState/GroupState.
USER_FIELDS = (
    "id",
    "user_name",
    "external_id",
    "active",
    "display_name",
    "given_name",
    "family_name",
    "email",
    "emails",
    "sso_name",
    "attributes",
    "version",
    "created_at",
    "updated_at",
    "created_by",
)
GROUP_FIELDS = ("id", "display_name", "external_id", "attributes", "version", "created_at", "updated_at", "created_by")


@dataclass(frozen=True)
class Table:
    name: str
    alias: str  # the alias the read model's own queries use
    fields: tuple[str, ...]

    def col(self, field: str, alias: str | None = None) -> str:
        """``alias.field``; a KeyError for a column this table does not have, so a
        reader that names a column that is gone fails in its unit tests, not in SQL."""
        if field not in self.fields:
            raise KeyError(f"{self.name} has no column {field!r}")
        return f"{alias or self.alias}.{field}"

    def columns(self, alias: str | None = None) -> str:
        a = alias or self.alias
        return ", ".join(f"{a}.{f}" for f in self.fields)


USERS = Table("users", "u", USER_FIELDS)
GROUPS = Table("groups", "g", GROUP_FIELDS)
TABLES = {"User": USERS, "Group": GROUPS}  # by resource type name


def groups_of(user: str = "u") -> str:
    """A user's groups (``UserState.groups``: ``{"id", "display_name"}``, by name then id)
    as one jsonb array, for the SELECT list of a query over ``users`` aliased ``user``.
    A user may be a member twice (by SCIM and by JIT): ``IN`` counts the group once.

    The group's tenant is checked in the aggregate's FILTER, not in WHERE: there it
    would let the planner read all the tenant's groups (``groups_created_idx``) instead
    of the user's few memberships and ``groups_pkey``."""
    return f"""(SELECT coalesce(jsonb_agg(jsonb_build_object('id', g.id, 'display_name', g.display_name)
    ORDER BY g.display_name, g.id) FILTER (WHERE g.tenant_id = {user}.tenant_id), '[]'::jsonb)
  FROM groups g WHERE g.id IN
    (SELECT m.group_id FROM memberships m WHERE m.user_id = {user}.id AND m.tenant_id = {user}.tenant_id))"""


NO_GROUPS = "'[]'::jsonb"  # in place of ``groups_of`` when the reader does not show them


def member_count(group: str = "g") -> str:
    """How many users are members of a group (a user counted once whatever the source)."""
    return (
        f"(SELECT count(DISTINCT m.user_id) FROM memberships m "
        f"WHERE m.group_id = {group}.id AND m.tenant_id = {group}.tenant_id)"
    )


def user_columns(*, groups: bool = True, alias: str = "u") -> str:
    """The SELECT list of a users read: every field, and ``groups`` (or ``[]``)."""
    return f"{USERS.columns(alias)}, {groups_of(alias) if groups else NO_GROUPS} AS groups"


def group_columns(*, members: bool = False, alias: str = "g") -> str:
    """The SELECT list of a groups read, with ``member_count`` if ``members``."""
    cols = GROUPS.columns(alias)
    return f"{cols}, {member_count(alias)} AS member_count" if members else cols


# --------------------------------------------------------------------------- memberships
#
# A user–group link as a filter needs it: ``link`` is the memberships alias, ``other``
# the alias of the row at the link's other end (a group's member, a user's group).


@dataclass(frozen=True)
class Link:
    own: str  # the memberships column pointing at the outer row
    other: str  # the memberships column pointing at the other end
    other_table: Table


MEMBERS = Link("group_id", "user_id", USERS)  # a group's members (users)
GROUPS_OF = Link("user_id", "group_id", GROUPS)  # a user's groups


def link_exists(link: Link, outer: str, m: str, other: str | None, cond: str | None = None) -> str:
    """``EXISTS`` a membership of the outer row (alias ``outer``) through alias ``m``,
    joined to the other end as ``other`` when the condition needs its columns."""
    on = f"{other}.id = {m}.{link.other} AND {other}.tenant_id = {m}.tenant_id"
    join = f" JOIN {link.other_table.name} {other} ON {on}" if other else ""
    where = f"{m}.{link.own} = {outer}.id AND {m}.tenant_id = {outer}.tenant_id" + (f" AND {cond}" if cond else "")
    return f"EXISTS (SELECT 1 FROM memberships {m}{join} WHERE {where})"


def link_col(link: Link, m: str) -> str:
    """The id at the other end of the link (a member's user id, a group id)."""
    return f"{m}.{link.other}"
