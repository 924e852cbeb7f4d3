"""A real browser for tests and `csmlab bench live`: Debian's Chromium with a wav file as its
microphone, JupyterLab on a free port, a static localhost server.

No browser can be downloaded here or in CI, so Playwright drives the system `chromium`
(scripts/install.sh installs it); without one, `chromium_path` says so (tests skip on it).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from csmlab.errors import CsmlabError

REPO = Path(__file__).resolve().parent.parent.parent  # the checkout csmlab is imported from
# JupyterLab asks on first start whether to fetch news; the answer, given in advance
LAB_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False}}


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise CsmlabError("no Chromium on this machine (scripts/install.sh installs Debian's `chromium`)")
    return path


def fake_mic_wav(source: Path, folder: Path, rate: int = 48000) -> Path:
    """`source` as 16-bit mono PCM at `rate`, the format Chromium's fake capture device reads."""
    out = folder / f"fake_mic_{rate}.wav"
    subprocess.run(["sox", str(source), "-r", str(rate), "-b", "16", "-c", "1", str(out)], check=True)
    return out


def launch_chromium(playwright, mic_wav: Path):
    """Chromium whose getUserMedia answers at once with `mic_wav` (looped) as the microphone."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=[
        "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav.resolve()}", "--autoplay-policy=no-user-gesture-required",
    ])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_lab(root: Path, timeout_s: float = 60):
    """JupyterLab on a free localhost port with a token, serving `root`; yields its base URL and token.

    Its kernels import csmlab from this checkout (PYTHONPATH), offline; settings and workspaces
    live under `root`, so the user's own JupyterLab state is neither read nor changed.
    """
    port, token = free_port(), secrets.token_hex(16)
    for name, value in LAB_SETTINGS.items():
        (root / ".lab-settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / ".lab-settings" / name).write_text(json.dumps(value))
    env = {**os.environ, "PYTHONPATH": str(REPO), "CSMLAB_OFFLINE": os.environ.get("CSMLAB_OFFLINE", "1"),
           "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "JUPYTERLAB_SETTINGS_DIR": str(root / ".lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / ".lab-workspaces")}
    log = open(root / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {root / 'jupyterlab.log'}")
                time.sleep(0.3)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@contextmanager
def static_server(folder: Path):
    """A localhost HTTP server for `folder` (a secure context: getUserMedia and AudioWorklet work)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_cell(page, text: str):
    """Run the JupyterLab code cell whose source contains `text` (Shift+Enter in its editor); returns the cell."""
    cell = page.locator(".jp-CodeCell", has=page.locator(".jp-InputArea-editor", has_text=text)).first
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    return cell


def printed_json(page, text: str) -> dict:
    """Run the cell whose source contains `text` and read the JSON it prints."""
    output = run_cell(page, text).locator(".jp-OutputArea-output").first
    output.wait_for(timeout=30_000)
    return json.loads(output.inner_text())


def start_widget(page, text: str):
    """Run the cell that makes a `DuplexWidget`, press its Start and wait until it runs; returns the widget."""
    widget = run_cell(page, text).locator(".csmlab-duplex")
    widget.wait_for(timeout=120_000)  # a first cell imports torch and loads Mimi: over 60 s seen at load 5-6
    widget.locator(".csmlab-start").click()
    widget.locator(".csmlab-status[data-status='running']").wait_for(timeout=60_000)
    return widget


def stall(page, widget, text: str) -> float:
    """Run the cell that stalls the kernel's worker (`DuplexWorker.pause`); the page's clock (ms) when asked."""
    at = widget.evaluate("el => 1000 * el.duplex.ctx.currentTime")
    run_cell(page, text)
    return at


def open_notebook(page, url: str, token: str, name: str) -> None:
    """Open notebook `name` in JupyterLab and wait until its kernel is idle."""
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    page.wait_for_selector("text=/Python 3 \\(ipykernel\\) \\| Idle/", timeout=90_000)
    page.wait_for_selector(".jp-Spinner", state="detached", timeout=30_000)
