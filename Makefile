# Two commands for a new user:  `make demo`  and  `make test`. Both do their own set-up.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench default-model clean

setup: $(STAMP)

# Re-runs only when requirements.txt changes, so a second `make` finishes in seconds.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

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
