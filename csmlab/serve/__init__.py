"""`csmlab serve`: any csmlab brain behind Moshi's websocket protocol, ready to deploy.

    csmlab serve --brain loopback                      # 127.0.0.1:8998, /api/chat, /healthz, /metrics
    CSMLAB_TOKEN=... csmlab serve --config deploy/csmlab.toml --host 0.0.0.0

Clients written for Moshi (moshi 0.2.13's `client.py`, its web UI) talk to it unchanged: the
protocol is in `protocol.py`, settings in `config.py` (a commented TOML file, then flags), the token
rule in `access.py`, one session in `chat.py`, the server and its lifecycle in `app.py`.
`client.py` is an independent client for tests, `csmlab bench soak` and latency measurements.
TLS and scaling are left to standard tools: see `deploy/`.
"""
from csmlab.serve.app import Server, run
from csmlab.serve.config import Settings, load_settings

__all__ = ["Server", "Settings", "load_settings", "run"]
