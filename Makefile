# The two commands a newcomer needs:   make demo   and   make test
# Each creates / updates the virtual environment itself (torch first, so pip never pulls a CUDA build
# on a CPU machine). On a GPU machine: make test TORCH_SPEC="torch==2.13.0" (a CUDA wheel) or any torch you use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.caregpt-installed

.PHONY: venv demo test test-fast clean-venv system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev,tune]"
	touch $(STAMP)

# The end-to-end demo on an embedded local Ray with a tiny model built from the shipped sample data.
demo: venv
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

# The whole test suite (unit, real local Ray, end-to-end).
test: venv system-deps
	CAREGPT_PROGRESS=0 $(VENV)/bin/python -m pytest -q -ra --durations=15 tests

test-fast: venv
	CAREGPT_PROGRESS=0 $(VENV)/bin/python -m pytest -q tests/unit

clean-venv:
	rm -rf $(VENV)
