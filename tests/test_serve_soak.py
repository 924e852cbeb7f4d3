"""The 60-second soak that CI runs: real speech through `csmlab serve`, as a user would run it.

`csmlab bench soak --minutes 1 --listen` in a subprocess (it starts its own server subprocess on a
free loopback port; loopback brain on the small trained Mimi). Every frame must be answered or
counted as dropped (a server that falls 2 s behind real time drops the oldest audio: a busy CI
machine may), no error may occur, RSS must stay flat and SIGTERM must stop the server with exit
status 0. The 10-minute figures live in data/results/ (notebook 06).
"""
import json
import os
import subprocess
import sys


def test_one_minute_soak_holds(tmp_path):
    out = tmp_path / "soak.json"
    env = {**os.environ, "CSMLAB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "csmlab.cli", "bench", "soak", "--minutes", "1", "--listen",
                           "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    fig = json.loads(out.read_text())
    assert fig["machine"]["cpu_cores"] >= 1 and fig["conversations"] >= 2  # 15 s sessions: it reconnected
    assert fig["frames_sent"] >= 0.5 * 60 / 0.08  # real-time pace, less reconnecting and draining
    assert fig["frames_received"] + round(fig["dropped_frames"]) == fig["frames_sent"]  # nothing unaccounted for
    assert fig["server_errors"] == {} and fig["client_errors"] == []
    assert fig["exit_code"] == 0
    assert abs(fig["rss_growth_mib_per_min"]) < 20, fig["rss_mib"]  # allocator noise, not a leak
    assert fig["steps"] == fig["frames_received"]
