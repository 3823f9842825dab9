# The commands a newcomer needs:   make demo   and   make test   (make test-fast while you work)
# Each creates / updates the virtual environment itself, with the extras it needs (torch first, so pip never
# pulls a CUDA build on a CPU machine). On a GPU machine: make test TORCH_SPEC="torch==2.13.0" (a CUDA wheel)
# or any torch you use. The core install alone: pip install .   (extras: webui, kb, tune, vllm, bench, dev)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
# one stamp per set of extras: `make demo` needs the knowledge base, the suite covers every optional feature
DEMO_STAMP := $(VENV)/.caregpt-demo
TEST_STAMP := $(VENV)/.caregpt-test
TEST_EXTRAS := dev,webui,kb,tune
PYTEST := CAREGPT_PROGRESS=0 $(VENV)/bin/python -m pytest

.PHONY: venv demo test test-fast clean-venv system-deps

venv: $(TEST_STAMP)

define install
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[$(1)]"
	touch $@
endef

$(DEMO_STAMP): pyproject.toml Makefile
	$(call install,kb)

$(TEST_STAMP): pyproject.toml Makefile
	$(call install,$(TEST_EXTRAS))
	touch $(DEMO_STAMP)

# The end-to-end demo on an embedded local Ray with a tiny model built from the shipped sample data.
# It prints its own progress; Ray's logs go to a file it names at the end (--verbose shows them).
demo: $(DEMO_STAMP)
	$(VENV)/bin/python jobs/demo.py --workdir .demo

# System packages the end-to-end tests drive: headless Chromium + a CJK font (web chat), Redis (GCS fault tolerance).
APT_PACKAGES ?= chromium fonts-wqy-zenhei redis-server
system-deps:
	@missing=""; for pkg in $(APT_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The whole test suite: unit, real local Ray, end-to-end (target: 20 minutes on 2 idle cores).
# pytest prints the 15 slowest tests (addopts in pyproject.toml).
test: $(TEST_STAMP) system-deps
	$(PYTEST) -q -ra tests

# Unit tests only: no Ray cluster, no servers beyond in-process stand-ins (target: 3 minutes on 2 idle cores).
test-fast: $(TEST_STAMP)
	$(PYTEST) -q tests/unit

clean-venv:
	rm -rf $(VENV)
