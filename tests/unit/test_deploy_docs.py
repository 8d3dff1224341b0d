"""docs/: the AsyncAPI document is the one the code generates; events.md and
operations.md name every message field, error code and metric that exists."""

from __future__ import annotations

import json
import re
import typing

import pytest
import yaml

from provisio_lib import asyncapi, contract
from provisio_lib.observability import REGISTRY, STREAM_METRIC_NAMES

from .deploy_support import ROOT

pytestmark = pytest.mark.unit

DOCS = ROOT / "docs"


def test_asyncapi_document_is_in_step_with_the_code():
    committed = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    generated = json.loads(json.dumps(asyncapi.build()))
    assert committed == generated, "docs/asyncapi.yaml is stale: run `python -m provisio_lib.asyncapi`"


def test_asyncapi_document_describes_every_stream_with_contract_schemas():
    doc = asyncapi.build()
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {asyncapi.COMMANDS, asyncapi.AUDIT, asyncapi.DEAD_LETTERS, asyncapi.REPLIES}
    schemas = doc["components"]["schemas"]
    for model in (contract.Command, contract.Outcome):
        assert set(schemas[model.__name__]["properties"]) == set(model.model_fields)
    # Every command payload type is in the document (the discriminated union).
    for payload in typing.get_args(typing.get_args(contract.CommandPayload)[0]):
        assert payload.__name__ in schemas
    groups = {c["bindings"]["redis"].get("groupName") for c in doc["channels"].values()}
    assert {"provisioner", "auditor"} <= groups


def test_events_md_covers_the_contract():
    text = (DOCS / "events.md").read_text()
    for name in typing.get_args(contract.CommandType):
        assert f"`{name}`" in text, f"events.md does not describe command type {name}"
    for code in typing.get_args(contract.ErrorCode):
        assert f"`{code}`" in text, f"events.md does not describe error code {code}"
    for model in (contract.Command, contract.Outcome):
        for field in model.model_fields:
            assert f"`{field}`" in text, f"events.md does not describe {model.__name__}.{field}"
    for field in ("error", "deliveries", "failed_at", "stream", "entry_id"):  # dead-letter fields
        assert f"`{field}`" in text
    assert "asyncapi.yaml" in text


def test_operations_md_explains_every_metric():
    text = (DOCS / "operations.md").read_text()
    names = [f.name for f in REGISTRY.collect() if f.name.startswith("provisio_")] + list(STREAM_METRIC_NAMES)
    assert len(names) > 15
    for name in names:
        assert re.search(rf"`{name}(_total)?`", text), f"docs/operations.md does not explain {name}"
    # The placeholder the lead fills with bench/ numbers.
    assert "## Benchmarks" in text
