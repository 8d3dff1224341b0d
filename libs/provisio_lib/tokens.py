"""SCIM bearer tokens: shown once, stored as SHA-256, compared in constant time.

SHA-256 (not a slow password hash) is right here: tokens are 256-bit random strings,
so there is nothing to brute-force, and the gateway must check one per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "prv_"


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_matches(token: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)
