# Moodreel: `make demo` (install + run the main job on embedded defaults), `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_TOOLS := ffmpeg ffprobe espeak-ng chromium

.PHONY: install system-deps demo test lint bench

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 ($(PYTHON)) is required" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 comes from the CPU wheel on this disk (pinned in requirements.lock).
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,aws]'
	touch $(STAMP)

install: system-deps $(STAMP)

# ffmpeg (media), espeak-ng (speech for demo and test clips), chromium (browser tests).
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng chromium >/dev/null; \
	  else \
	    echo "missing system tools:$$missing — install them (Debian: sudo apt-get install ffmpeg espeak-ng chromium)" >&2; exit 1; \
	  fi; \
	fi

demo: install
	$(VENV)/bin/moodreel demo

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: install
	@$(PY) -m pytest -q -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/preprocess.py
