"""Bearer-token authentication for the django-scim2 peer: django-scim2 leaves auth to the
project; this sets request.user to one service user when the token matches."""

import hmac
import os

from django.contrib.auth.models import AnonymousUser

_TOKEN = os.environ.get("SCIM2_BENCH_TOKEN", "")


class _ServiceUser:
    is_anonymous = False
    is_authenticated = True
    is_active = True
    pk = id = 0


class BearerTokenMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and _TOKEN and hmac.compare_digest(token.strip(), _TOKEN)
        request.user = _ServiceUser() if ok else AnonymousUser()
        return self.get_response(request)
