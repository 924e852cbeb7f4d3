"""Who may open a session: the access-token decision and the browser rules, apart from the web server
to test alone.

Browsers first (`foreign_request`, every route, as JupyterLab does): any page a user visits may open
`ws://127.0.0.1:8998/api/chat` (websockets are not bound by the same-origin policy), and a
DNS-rebinding page reaches a loopback server under its own name. So a request that carries an
`Origin` is served only when that origin is the server's own (the `GET /` page) or allowed
(`allowed_origins`, "*" for any), and a loopback-bound server (or any server given `allowed_hosts`)
answers only a `Host` that names loopback or an `allowed_hosts` entry (behind a reverse proxy, its
public name). Clients that are not browsers send no `Origin` and pass.

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

from csmlab.serve.config import Settings, is_loopback

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


def _hostname(host: str) -> str:
    """`Host`'s name without its port: "127.0.0.1:8998" -> "127.0.0.1", "[::1]:8998" -> "::1"."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0] if host.count(":") == 1 else host


def foreign_request(settings: Settings, headers: Mapping[str, str]) -> str | None:
    """None when a browser may make this request, else why not (sent back with HTTP 403)."""
    host = headers.get("Host", "")
    name = _hostname(host).lower()
    hosts = settings.allowed_hosts
    if (settings.loopback or hosts) and not is_loopback(name) and name not in hosts and "*" not in hosts:
        return (f"Host {host!r} is not this server's name: a loopback server answers loopback names only "
                "(DNS rebinding); behind a proxy, start it with --allow-host <public name>")
    origin = headers.get("Origin")
    if origin is None or "*" in settings.allowed_origins or origin in settings.allowed_origins:
        return None
    if origin.partition("://")[2].lower() == host.lower():  # the page this server serves at GET /
        return None
    return (f"pages from {origin!r} may not use this server; to allow them, start it with "
            f"--allow-origin {origin}")


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[len("bearer "):].strip()
    return query.get("token", "")


def details_allowed(settings: Settings, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """What /healthz may tell beyond "ready": everything on loopback, only with the token beyond it."""
    return settings.loopback or (bool(settings.token) and access_denied(settings, headers, query) is None)


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
