"""Settings of `csmlab serve`: defaults, a commented TOML file, then command-line flags.

Later wins: `Settings()` defaults < `[server]`/`[brain]`/`[limits]` tables of the TOML file
(`deploy/csmlab.toml` is the commented example) < flags such as `--port` < the `CSMLAB_TOKEN`
environment variable for the token (a secret belongs in the environment, not in `ps` output).
Unknown keys and impossible values raise `ConfigError` naming the key, so a typo in a deployed
file stops the server at start-up instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from csmlab.errors import ConfigError, is_number
from csmlab.pipeline.overload import POLICIES
from csmlab.pipeline.registry import BRAINS

TOKEN_ENV = "CSMLAB_TOKEN"
SECTIONS = {
    "server": ("host", "port", "token", "insecure", "allowed_origins", "allowed_hosts"),
    "brain": ("brain", "weights", "listen", "device", "threads", "batch", "overload"),
    "limits": ("max_sessions", "max_session_s", "max_message_bytes", "idle_timeout_s", "header_timeout_s",
               "max_connections_per_client"),
}


@dataclass(frozen=True)
class Settings:
    """Everything `csmlab serve` reads; the TOML keys and the flags have the same names."""

    host: str = "127.0.0.1"  # loopback only unless you say otherwise
    port: int = 8998  # moshi's own server's port, so Moshi clients find it
    token: str = ""  # required beyond loopback (or insecure = true)
    insecure: bool = False  # allow a non-loopback bind without a token (behind a trusted proxy only)
    # Browsers: a page from another origin may not open a session ("*": any may), and, against DNS
    # rebinding, a loopback server answers only requests addressed to a loopback name (access.py)
    allowed_origins: tuple[str, ...] = ()  # e.g. ("https://chat.example.org",); same-origin always passes
    allowed_hosts: tuple[str, ...] = ()  # names beyond loopback's a loopback-bound server answers (a proxy's)
    brain: str = "loopback"
    weights: str = ""  # a checkpoint path; "" lets csmlab.weights resolve it
    listen: bool = False  # offline: the small trained Mimi, so that the audio follows the speech
    device: str = "cpu"
    threads: int = 1  # torch threads, one setting for the whole process
    batch: bool = False  # step all sessions' Moshi and Mimi in one forward per step (csmlab.pipeline.batching)
    overload: str = "skip"  # what a session sheds when its brain cannot keep up (csmlab.pipeline.overload)
    max_sessions: int = 2
    max_session_s: float = 600.0
    max_message_bytes: int = 64 * 1024  # a 80 ms Opus page is ~300 bytes
    idle_timeout_s: float = 30.0
    header_timeout_s: float = 10.0  # a connection with no request in progress is closed after this (slowloris)
    max_connections_per_client: int = 16  # open connections per client address (behind a proxy: the proxy's)

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect (127.0.0.0/8, ::1, localhost)."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or 0.0.0.0-style wildcard reaches beyond this machine


def _flatten(table: dict, source: str) -> dict:
    flat = {}
    for section, values in table.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"{source}: unknown table [{section}]; known tables: {', '.join(SECTIONS)}")
        for key, value in values.items():
            if key not in SECTIONS[section]:
                raise ConfigError(f"{source}: unknown key {key!r} in [{section}]; known: {', '.join(SECTIONS[section])}")
            flat[key] = value
    return flat


def read_toml(path: str | Path) -> dict:
    """The settings a TOML file sets, flattened to `Settings` field names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; start from deploy/csmlab.toml")
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err
    return _flatten(table, str(path))


def _typed(name: str, value, kind: type):
    if kind is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"setting {name} must be a list of strings, not {value!r}")
        return tuple(value)
    if kind is float and is_number(value, int):
        return float(value)
    if not (is_number(value, kind) if kind in (int, float) else isinstance(value, kind)):
        raise ConfigError(f"setting {name} must be a {kind.__name__}, not {value!r}")
    return value


def _check(settings: Settings) -> Settings:
    if settings.brain not in BRAINS:
        raise ConfigError(f"brain {settings.brain!r} is unknown; choose one of {', '.join(BRAINS)}")
    if settings.overload not in POLICIES:
        raise ConfigError(f"overload policy {settings.overload!r} is unknown; choose one of {', '.join(POLICIES)}")
    if not 0 <= settings.port < 65536:
        raise ConfigError(f"port {settings.port} is out of range 0..65535 (0 picks a free port)")
    for name in ("threads", "max_sessions", "max_session_s", "max_message_bytes", "idle_timeout_s",
                 "header_timeout_s", "max_connections_per_client"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"setting {name} must be positive, not {getattr(settings, name)}")
    if not settings.loopback and not settings.token and not settings.insecure:
        raise ConfigError(
            f"binding {settings.host} lets other machines connect, so it needs an access token: "
            f"set {TOKEN_ENV} (or token in the config file), or pass --insecure behind a trusted proxy"
        )
    return settings


def load_settings(path: str | Path | None = None, **overrides) -> Settings:
    """Defaults, then the TOML file at `path`, then `overrides` (flags; None means 'not given')."""
    values = read_toml(path) if path else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if os.environ.get(TOKEN_ENV):
        values["token"] = os.environ[TOKEN_ENV]
    kinds = {f.name: type(f.default) for f in fields(Settings)}
    unknown = set(values) - set(kinds)
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}; known: {', '.join(kinds)}")
    return _check(dataclasses.replace(Settings(), **{k: _typed(k, v, kinds[k]) for k, v in values.items()}))
