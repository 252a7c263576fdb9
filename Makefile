# The two commands of a fresh clone: `make demo` and `make test`. Both leave the environment in .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU environments take the pinned CPU build that lies on disk; GPU users override, e.g. TORCH_SPEC="torch".
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo test test-slow lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	@# WordNet 3.0 for the LRS-VQA scorer comes from Debian's packages (no download at run time).
	@dpkg -s wordnet-base wordnet-sense-index >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null) || \
	  echo "warning: could not install Debian's wordnet-base; 'lrs eval score' synonym matching will be unavailable"
	@# PostgreSQL server binaries for the real-server tests (tests/infra: initdb + pg_ctl, no service).
	@dpkg -s postgresql >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	  echo "warning: could not install Debian's postgresql; the PostgreSQL server tests will be skipped"
	$(BIN)/lrs setup
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/lrs demo --out demo-output

test: install
	$(BIN)/python -m pytest

# The slow tests only (real Prefect servers on SQLite and PostgreSQL, schedules that fire, ...).
test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check lrs_core tasks flows tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-output
