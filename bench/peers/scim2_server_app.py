"""scim2-server (in memory, its own WSGI application) for gunicorn, built as its
``scim2-server`` command builds it, with one static bearer token from SCIM2_BENCH_TOKEN.

    SCIM2_BENCH_TOKEN=t gunicorn -w 1 -k gthread --threads 8 -b 127.0.0.1:8093 bench.peers.scim2_server_app:application

One worker: the storage is in the process's memory, so a second worker would not see
the first one's users (threads share it).
"""

import os
import secrets

from scim2_models import ScimProvider
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.utils import load_default_resource_types, load_default_schemas, load_default_service_provider_config

config = load_default_service_provider_config()
config.authentication_schemes = [*(config.authentication_schemes or []), BEARER_TOKEN_SCHEME]
provider = ScimProvider.from_discovery(
    load_default_schemas().values(), load_default_resource_types().values(), config=config
)
service = ScimService(provider, secret=secrets.token_urlsafe(32))
application = BearerTokenApplication(
    InMemoryStorage(), provider, service=service, bearer_tokens=[os.environ["SCIM2_BENCH_TOKEN"]]
)
