"""Who may open a session: the access-token decision, kept apart from the web server to test alone.

A configured token is always required; `load_settings` already refuses a non-loopback bind without
one unless `insecure` is set. Clients send it as `Authorization: Bearer <token>` or, where a
browser's WebSocket cannot set headers, as `?token=<token>`. The comparison takes constant time
(`hmac.compare_digest`) so response timing does not leak how much of a guess was right.
"""
from __future__ import annotations

import hmac
from typing import Mapping

from csmlab.serve.config import Settings


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[len("bearer "):].strip()
    return query.get("token", "")


def access_denied(settings: Settings, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """None when the request may proceed, else the reason it may not (sent back with HTTP 401)."""
    if not settings.token:
        return None
    token = presented_token(headers, query)
    if not token:
        return "an access token is required: send 'Authorization: Bearer <token>' or ?token=<token>"
    if not hmac.compare_digest(token.encode(), settings.token.encode()):
        return "wrong access token"
    return None
