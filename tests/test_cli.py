"""The `csmlab` command as a user runs it, in a subprocess."""
import os
import subprocess
import sys


def _csmlab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CSMLAB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "csmlab.cli", *args], capture_output=True, text=True, env=env)


def test_doctor_reports_machine_versions_and_offline_weights():
    done = _csmlab("doctor", "--no-bench")  # its real-time section: tests/test_realtime.py
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for fact in ("cpu cores", "torch", "moshi", "transformers", "compatibility:", "pinned packages"):
        assert fact in out
    for model in ("mimi", "moshi", "csm"):
        assert f"{model}: OFFLINE stand-in" in out
    assert out.count("NOT the released model") == 3


def test_unknown_command_fails_with_usage():
    done = _csmlab("teleport")
    assert done.returncode != 0 and "usage" in done.stderr


def test_subcommand_options_reach_their_own_parser():
    train = _csmlab("train-codec", "--help")
    assert train.returncode == 0 and "--minutes" in train.stdout
    bench = _csmlab("bench", "codec", "--help")
    assert bench.returncode == 0 and "--json" in bench.stdout
