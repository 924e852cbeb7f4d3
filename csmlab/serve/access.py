"""Who may open a session: the access-token decision, kept apart from the web server to test alone.

A configured token is always required; `load_settings` already refuses a non-loopback bind without
one unless `insecure` is set. Clients send it as `Authorization: Bearer <token>` or, where a
browser's WebSocket cannot set headers, as `?token=<token>`. The comparison takes constant time
(`hmac.compare_digest`) so response timing does not leak how much of a guess was right. Any bytes
may arrive in a header (aiohttp keeps undecodable ones as surrogates): they compare as bytes and are
simply wrong, never a 500. A token in a URL is redacted from the access log (`redact`).
"""
from __future__ import annotations

import hmac
import re
from typing import Iterable, Mapping

from aiohttp.web_log import AccessLogger

from csmlab.serve.config import Settings

_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every `token=<value>` replaced by `token=<redacted>` (request lines, referers)."""
    return _TOKEN_IN_URL.sub(r"\1<redacted>", text)


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log, with tokens taken out of every logged field (`?token=` is how browsers
    send it, and a log is read by more people than the token is meant for)."""

    def _format_line(self, request, response, time: float) -> Iterable[tuple]:
        return [(key, redact(value) if isinstance(value, str) else value)
                for key, value in super()._format_line(request, response, time)]


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
    if not hmac.compare_digest(_utf8(token), _utf8(settings.token)):
        return "wrong access token"
    return None


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates (undecodable header bytes) too
