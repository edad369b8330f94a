# Two commands for a new user:  `make demo`  and  `make test`. Both do their own set-up.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lock demo test bench default-model clean

setup: $(STAMP)

# Installs the lock (the exact versions the tests passed with); re-runs only when it changes,
# so a second `make` finishes in seconds.
$(STAMP): requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $(STAMP)

# After editing requirements.txt: install what it adds into .venv, then pin what is installed.
lock:
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) tools/lock_requirements.py

demo: $(STAMP)
	$(PY) -m training demo

test: $(STAMP)
	$(PY) -m pytest test

bench: $(STAMP)
	$(PY) bench/run_all.py

default-model: $(STAMP)
	$(PY) -m training default-model

clean:
	rm -rf build install log .pytest_cache
