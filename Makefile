# Every target runs the same idempotent set-up first (scripts/bootstrap.sh).
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-unit lint bench fuzz demo demo-scaleout soak clean install uninstall

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check xdplbd tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) -m bench

# The differential test of the data plane against its reference model, long:
# 10^7 frames (about 45 min on 2 vCPUs), outside CI. XDPLB_DIFF_SEED=N replays a run.
FUZZ_FRAMES ?= 10000000
fuzz: setup
	XDPLB_DIFF_FRAMES=$(FUZZ_FRAMES) $(PY) -m pytest -s -p no:cacheprovider --timeout=0 \
	  tests/dataplane/test_differential.py -k seeded $(PYTEST_ARGS)

demo: setup
	$(PY) -m xdplbd.lab.demo

# Three LB nodes behind a BIRD router (BGP, ECMP, BFD): spread, a node dies, it rejoins.
demo-scaleout: setup
	$(PY) -m xdplbd.lab.scaleout demo

# The chaos soak (docs/soak.md): minutes long, not in CI. SOAK_SEED replays a run.
SOAK_SECONDS ?= 600
SOAK_SEED ?=
soak: setup
	$(PY) -m xdplbd.lab.soak --seconds $(SOAK_SECONDS) $(if $(SOAK_SEED),--seed $(SOAK_SEED)) \
	  --json soak-result.json

# install/uninstall do not run the dev set-up: they install only what xdplbd
# needs at run time (scripts/install.sh, docs/install.md). Idempotent.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
VENVDIR ?= /opt/xdplb
INSTALL_ENV = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" SYSCONFDIR="$(SYSCONFDIR)" \
  VENVDIR="$(VENVDIR)" UNITDIR="$(UNITDIR)" PIP_ARGS="$(PIP_ARGS)" \
  XDPLB_INSTALL_DEPS="$(XDPLB_INSTALL_DEPS)"

install:
	@$(INSTALL_ENV) bash scripts/install.sh install

uninstall:
	@$(INSTALL_ENV) bash scripts/install.sh uninstall

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
