"""/metrics is served on the gateways' operator listener only (issue 13 §5): the public
SCIM (8081), SAML (8082) and App API (8083) ports answer anyone, and the metrics name tenants' routes
and rates. /healthz and /readyz stay on the public port, where probes and compose look."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from provisio_lib.observability import operator_port
from provisio_lib.settings import load_settings
from scim_gateway.app import create_app as create_scim
from scim_gateway.settings import ScimSettings
from tests.integration.scim_helpers import bearer

pytestmark = pytest.mark.integration


async def _check(client: TestClient, app, probe: str) -> None:
    r = await client.get("/metrics")
    assert r.status == 404, "metrics must not be served on the public port"
    assert "provisio_" not in await r.text()
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    port = operator_port(app)
    assert port not in (0, client.server.port)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
            assert r.status == 200
    assert "provisio_http_requests_total" in text and probe in text


async def test_scim_metrics_only_on_the_operator_listener(service_env, tenant):
    settings = load_settings(ScimSettings)
    assert ScimSettings.model_fields["scim_metrics_port"].default == 9181
    app = create_scim(settings)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/scim/v2/Users", headers=bearer(tenant.token))).status == 200
        await _check(client, app, 'route="/scim/v2/Users"')
        port = operator_port(app)
    with pytest.raises(aiohttp.ClientConnectionError):  # closed with the app
        async with aiohttp.ClientSession() as http:
            await http.get(f"http://127.0.0.1:{port}/metrics")


async def test_saml_metrics_only_on_the_operator_listener(service_env):
    from saml_gateway.app import create_app as create_saml
    from saml_gateway.settings import SamlSettings

    assert SamlSettings.model_fields["saml_metrics_port"].default == 9182
    app = create_saml(load_settings(SamlSettings))
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/saml/nope/nope/metadata")).status == 404
        await _check(client, app, "provisio_http_requests_total")


async def test_app_api_metrics_only_on_the_operator_listener(service_env, pool, tenant):
    from app_api.app import create_app as create_app_api
    from app_api.settings import AppApiSettings
    from provisio_lib import api_keys

    assert AppApiSettings.model_fields["app_api_metrics_port"].default == 9183
    async with pool.acquire() as conn:
        key = await api_keys.create_key(conn, "metrics-probe", tenant.id)
    app = create_app_api(load_settings(AppApiSettings))
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/api/v1/events", params={"tenant": tenant.name}, headers=bearer(key))
        assert r.status == 200
        await _check(client, app, "provisio_app_api_events_served_total")
        url = f"http://127.0.0.1:{operator_port(app)}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert 'service="app-api"' in await r.text()
