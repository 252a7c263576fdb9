# The two commands of a fresh clone: `make demo` and `make test`. Both leave the environment in .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU environments take the pinned CPU build that lies on disk; GPU users override, e.g. TORCH_SPEC="torch".
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

# The page of `lrs serve` uses OpenLayers from the npm registry, vendored into the package (no CDN at
# run time). The files are committed, so a fresh clone needs no npm; `make vendor` refreshes them.
OL_VERSION ?= 10.11.0
VENDOR_DIR := lrs_core/serve/static/vendor/ol

.PHONY: install demo test test-slow lint clean vendor

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
	@# Headless Chromium for the browser test of `lrs serve` (Debian's package, driven by Playwright
	@# with executable_path=/usr/bin/chromium; `playwright install` is never run).
	@dpkg -s chromium chromium-driver >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "warning: could not install Debian's chromium; the browser test of 'lrs serve' will be skipped"
	$(BIN)/lrs setup
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/lrs demo --out demo-output

# CI runs this and nothing else (.ci/run): the checks, then every test but the GPU ones, the slow
# real-server tests (tests/infra) included; a bare `pytest` leaves the slow ones out.
test: install lint
	$(BIN)/python -m pytest -m "not gpu"

# The slow tests only (real Prefect servers on SQLite and PostgreSQL, schedules that fire, ...).
test-slow: install
	$(BIN)/python -m pytest -m slow

# ruff, mypy (strict) and the layering contract (import-linter; see docs/architecture.md).
lint: install
	$(BIN)/ruff check lrs_core tasks flows tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

vendor:
	rm -rf build/npm && mkdir -p build/npm $(VENDOR_DIR)
	cd build/npm && npm pack --silent ol@$(OL_VERSION) && tar xzf ol-$(OL_VERSION).tgz
	cp build/npm/package/dist/ol.js build/npm/package/ol.css build/npm/package/LICENSE.md $(VENDOR_DIR)/
	echo "ol@$(OL_VERSION) from the npm registry (npm pack); dist/ol.js, ol.css, LICENSE.md" > $(VENDOR_DIR)/VERSION

clean:
	rm -rf $(VENV) demo-output
