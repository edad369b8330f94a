# Two commands for a new user:  `make demo`  and  `make test`. Both do their own set-up.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lock demo test bench default-model real-data clean

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

# A real development set: the Semantic Drone Dataset (400 labelled UAV frames; non-commercial
# research use, no redistribution: docs/data.md). Cloned beside the repository and imported
# outside it; nothing of it may be committed, and no test needs it.
SDD_SRC ?= ../semantic_drone_dataset
SDD_OUT ?= ../data/semantic_drone
SDD_SIZE ?= 256
real-data: $(STAMP)
	test -d $(SDD_SRC)/training_set || \
	  git clone --depth 1 https://github.com/nonari/semantic_drone_dataset $(SDD_SRC)
	$(PY) -m training import-dataset --images $(SDD_SRC)/training_set/low_res_images \
	  --labels $(SDD_SRC)/training_set/gt/semantic/low_res_label_images \
	  --mapping training/mappings/semantic_drone_rgb.yaml --out $(SDD_OUT) \
	  --size $(SDD_SIZE) --prefix sdd_

clean:
	rm -rf build install log .pytest_cache
