"""`csmlab serve` settings (TOML, flags, environment) and the access-token decision, without a network."""
from pathlib import Path

import pytest

from csmlab.errors import ConfigError
from csmlab.serve.access import access_denied
from csmlab.serve.config import Settings, load_settings
from csmlab.serve.protocol import ProtocolError, audio_payload, check_ogg_pages

DEPLOY_TOML = Path(__file__).resolve().parents[1] / "deploy" / "csmlab.toml"


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch):
    monkeypatch.delenv("CSMLAB_TOKEN", raising=False)


def test_the_shipped_config_file_loads_and_equals_the_defaults():
    assert load_settings(DEPLOY_TOML) == Settings()


def test_flags_override_the_file_and_the_environment_overrides_the_token(tmp_path, monkeypatch):
    path = tmp_path / "s.toml"
    path.write_text('[server]\nport = 9000\n[limits]\nmax_sessions = 5\nidle_timeout_s = 3\n')
    settings = load_settings(path, port=9100, brain=None)
    assert (settings.port, settings.max_sessions, settings.idle_timeout_s, settings.brain) == (9100, 5, 3.0, "loopback")
    monkeypatch.setenv("CSMLAB_TOKEN", "from-env")
    assert load_settings(path, host="0.0.0.0").token == "from-env"


@pytest.mark.parametrize("text, words", [
    ("[server]\nprot = 1\n", "unknown key 'prot'"),
    ("[sever]\nport = 1\n", "unknown table [sever]"),
    ("[limits]\nmax_sessions = 'two'\n", "must be a int"),
    ("[limits]\nmax_sessions = 0\n", "must be positive"),
    ("[brain]\nbrain = 'gpt'\n", "choose one of"),
    ("[server\n", "not valid TOML"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        load_settings(path)


def test_binding_beyond_loopback_needs_a_token_or_insecure():
    with pytest.raises(ConfigError, match="needs an access token"):
        load_settings(host="0.0.0.0")
    assert load_settings(host="0.0.0.0", insecure=True).insecure
    assert load_settings(host="::1").loopback and load_settings(host="localhost").loopback
    assert not load_settings(host="192.168.1.5", token="t").loopback


def test_access_decision_bearer_query_missing_wrong():
    exposed = Settings(host="0.0.0.0", token="s3cret")
    assert access_denied(exposed, {"Authorization": "Bearer s3cret"}, {}) is None
    assert access_denied(exposed, {}, {"token": "s3cret"}) is None
    assert "required" in access_denied(exposed, {}, {})
    assert "wrong" in access_denied(exposed, {"Authorization": "Bearer s3cre"}, {})
    assert "wrong" in access_denied(exposed, {}, {"token": "s3cret "})
    assert access_denied(Settings(), {}, {}) is None  # loopback without a token: open


def test_ogg_page_check_accepts_sphn_pages_and_refuses_cut_or_foreign_ones():
    import numpy as np
    import sphn

    writer = sphn.OpusStreamWriter(24000)
    pages = [writer.append_pcm(np.zeros(1920, np.float32)) for _ in range(3)]
    check_ogg_pages(b"".join(pages))  # several whole pages in one message are fine
    assert audio_payload(b"\x01" + pages[1]) == pages[1]
    for bad, kind in ((pages[0][:-1], "truncated_audio"), (pages[0][:10], "truncated_audio"),
                      (b"ID3" + pages[0], "not_ogg")):
        with pytest.raises(ProtocolError) as err:
            check_ogg_pages(bad)
        assert err.value.kind == kind


def test_deploy_files_agree_with_the_server():
    """The port, the install path, the config path and the flags the deploy files use are real."""
    import yaml

    from csmlab.cli import build_parser

    deploy = DEPLOY_TOML.parent
    port = str(Settings().port)
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    assert compose["services"]["csmlab"]["expose"] == [port]
    assert compose["services"]["csmlab"]["build"]["dockerfile"] == "deploy/Dockerfile"
    dockerfile = (deploy / "Dockerfile").read_text()
    assert "bash scripts/install.sh" in dockerfile and f"EXPOSE {port}" in dockerfile
    entry = yaml.safe_load(dockerfile.split("ENTRYPOINT", 1)[1].strip())  # a JSON list is YAML too
    unit = next(line for line in (deploy / "csmlab.service").read_text().splitlines() if line.startswith("ExecStart="))
    for argv in (entry[1:] + ["--brain", "loopback"], unit.split()[1:]):
        args = build_parser().parse_args(argv)  # every flag the deploy files pass exists
        assert args.command == "serve" and args.config == "/etc/csmlab/csmlab.toml"
    nginx = (deploy / "nginx.conf").read_text()
    assert f"127.0.0.1:{port}" in nginx and "proxy_set_header Upgrade $http_upgrade" in nginx
