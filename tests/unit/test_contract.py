import json
import uuid

import pytest
from pydantic import ValidationError

from provisio_lib import contract
from provisio_lib.contract import (
    Command,
    CreateUser,
    Outcome,
    Source,
    UserData,
    decode_command,
    encode,
)

pytestmark = pytest.mark.unit

SRC = Source(kind="scim", id="tok-1", label="entra")


def make_command(**kw):
    return Command(
        tenant_id=uuid.uuid4(),
        source=SRC,
        correlation_id="c-1",
        payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name="alice@acme.test")),
        **kw,
    )


def test_committed_json_schemas_match_the_models():
    for name, schema in contract.json_schemas().items():
        path = contract.SCHEMA_DIR / f"{name}.v{contract.SCHEMA_VERSION}.json"
        assert path.exists(), f"run `python -m provisio_lib.contract` to write {path.name}"
        committed = json.loads(path.read_text())
        assert committed == json.loads(json.dumps(schema)), (
            f"{path.name} is out of date: run `python -m provisio_lib.contract`"
        )


def test_command_round_trips_as_readable_json():
    cmd = make_command()
    wire = encode(cmd)
    as_dict = json.loads(wire)
    assert as_dict["type"] == "user.create"
    assert as_dict["payload"]["data"]["user_name"] == "alice@acme.test"
    assert decode_command(wire) == cmd


def test_type_is_taken_from_the_payload_and_must_match():
    cmd = make_command()
    raw = json.loads(encode(cmd))
    raw["type"] = "user.delete"
    with pytest.raises(ValidationError, match="envelope type"):
        Command.model_validate(raw)


def test_models_are_frozen_and_reject_unknown_fields():
    cmd = make_command()
    with pytest.raises(ValidationError):
        cmd.correlation_id = "x"  # type: ignore[misc]
    raw = json.loads(encode(cmd))
    raw["surprise"] = 1
    with pytest.raises(ValidationError):
        Command.model_validate(raw)


def test_newer_version_is_refused_with_a_clear_message():
    raw = json.loads(encode(make_command()))
    raw["version"] = contract.SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer than this code"):
        decode_command(json.dumps(raw))


def test_outcome_ok_reflects_result():
    cmd = make_command()
    base = dict(
        event_id=cmd.event_id,
        command_type=cmd.type,
        tenant_id=cmd.tenant_id,
        source=SRC,
        correlation_id="c-1",
        occurred_at=cmd.occurred_at,
    )
    assert Outcome(result="applied", **base).ok
    failed = Outcome(result="failed", error={"code": "uniqueness", "message": "taken"}, **base)
    assert not failed.ok
    assert contract.decode_outcome(encode(failed)) == failed


def test_several_outcomes_travel_as_one_json_array_and_older_versions_are_upcast(monkeypatch):
    cmd = make_command()
    base = dict(
        event_id=cmd.event_id,
        command_type=cmd.type,
        tenant_id=cmd.tenant_id,
        source=SRC,
        correlation_id="c-1",
        occurred_at=cmd.occurred_at,
    )
    outs = [
        Outcome(result="applied", **base),
        Outcome(result="failed", error={"code": "uniqueness", "message": "taken"}, **base),
    ]
    wire = contract.encode_outcomes([encode(o) for o in outs])
    assert [o["result"] for o in json.loads(wire)] == ["applied", "failed"]
    assert contract.decode_outcomes(wire) == outs
    # An entry written by an older version: each element goes through the upcasters.
    old = [dict(json.loads(encode(o)), version=contract.SCHEMA_VERSION - 1, legacy="x") for o in outs]

    def drop_legacy(raw):
        return {k: v for k, v in raw.items() if k != "legacy"} | {"version": contract.SCHEMA_VERSION}

    monkeypatch.setitem(contract.UPCASTERS, contract.SCHEMA_VERSION - 1, drop_legacy)
    assert contract.decode_outcomes(json.dumps(old)) == outs
    with pytest.raises(ValidationError):
        contract.decode_outcomes(b'[{"not": "an outcome"}]')
