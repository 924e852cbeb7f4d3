# The two commands of the README. Both install what they need (scripts/install.sh) first.
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install lab test mutation widget-screenshot

install:
	bash scripts/install.sh

# --allow-root only when root (containers, CI, many cloud VMs); no browser to open on a headless
# machine (no DISPLAY/WAYLAND_DISPLAY on Linux): JupyterLab then prints the URL, with its token, to open.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root) \
	$(if $(and $(filter Linux,$(shell uname -s)),$(if $(DISPLAY)$(WAYLAND_DISPLAY),,headless)),--no-browser)

lab: install
	$(VENV)/bin/jupyter lab $(LAB_FLAGS) notebooks/

test: install
	CSMLAB_OFFLINE=$${CSMLAB_OFFLINE:-1} $(VENV)/bin/python -m pytest --nbval-lax --durations=15 tests notebooks

# On demand, not in CI (minutes): mutmut 3 over the modules in pyproject.toml's [tool.mutmut];
# the score per module goes to data/results/mutation.json (scripts/mutation.py).
mutation: install
	$(VENV)/bin/pip install -q $$($(VENV)/bin/python scripts/pins.py mutation)
	$(VENV)/bin/python scripts/mutation.py

# Notebook 05's picture of the widget in use (about a minute: JupyterLab and headless Chromium with a
# recording as the microphone, tests/test_browser.py's run): notebooks/05_widget_in_use.png.
widget-screenshot: install
	CSMLAB_OFFLINE=$${CSMLAB_OFFLINE:-1} $(VENV)/bin/python scripts/widget_screenshot.py
