"""name.formatted follows givenName/familyName (issue 13 §5): SCIM PATCH and JIT sync."""

from __future__ import annotations

from provisio_lib.names import refresh_formatted
from provisioner.domain import jit_updates


def test_changed_part_recomputes_formatted():
    before = {"formatted": "Ada Lovelace", "givenName": "Ada", "familyName": "Lovelace"}
    after = {**before, "givenName": "Augusta"}
    assert refresh_formatted(before, after) == {**after, "formatted": "Augusta Lovelace"}


def test_formatted_sent_with_the_change_wins_and_absent_stays_absent():
    before = {"formatted": "Ada Lovelace", "givenName": "Ada"}
    assert refresh_formatted(before, {"formatted": "Lady Ada", "givenName": "A"}) is None
    assert refresh_formatted({"givenName": "Ada"}, {"givenName": "B"}) is None
    assert refresh_formatted(before, dict(before)) is None


def test_all_parts_in_rfc_order():
    before = {"formatted": "x", "givenName": "Jane"}
    after = {
        "formatted": "x",
        "honorificPrefix": "Dr.",
        "givenName": "Jane",
        "middleName": "M.",
        "familyName": "Doe",
        "honorificSuffix": "III",
    }
    assert refresh_formatted(before, after)["formatted"] == "Dr. Jane M. Doe III"


def test_jit_sync_recomputes_stored_formatted():
    current = {
        "given_name": "Ada",
        "family_name": "Lovelace",
        "display_name": "Ada",
        "attributes": {"name": {"formatted": "Ada Lovelace"}, "title": "Countess"},
    }
    updates = jit_updates(current, {"given_name": "Ada", "family_name": "King"})
    assert updates["family_name"] == "King"
    assert updates["attributes"] == {"name": {"formatted": "Ada King"}, "title": "Countess"}
    # nothing stored to keep in step: no attributes update
    assert "attributes" not in jit_updates({"given_name": "A", "attributes": {}}, {"given_name": "B"})
