"""Real-browser test plumbing (csmlab.bench.browser, shared with `csmlab bench live`); a test skips,
saying why, only when there is no Chromium."""
from __future__ import annotations

import pytest

from csmlab.bench import browser
from csmlab.bench.browser import REPO, fake_mic_wav, free_port, jupyter_lab, launch_chromium, static_server
from csmlab.errors import CsmlabError

__all__ = ["REPO", "chromium_path", "fake_mic_wav", "free_port", "jupyter_lab", "launch_chromium", "static_server"]


def chromium_path() -> str:
    try:
        return browser.chromium_path()
    except CsmlabError as err:
        pytest.skip(str(err))
