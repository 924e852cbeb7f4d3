# The two commands of the README. Both install what they need (scripts/install.sh) first.
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install lab test

install:
	bash scripts/install.sh

lab: install
	$(VENV)/bin/jupyter lab notebooks/

test: install
	CSMLAB_OFFLINE=$${CSMLAB_OFFLINE:-1} $(VENV)/bin/python -m pytest --nbval-lax --durations=15 tests notebooks
