# orthanc-nas — every task a person or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Python that Orthanc's Python plugin embeds (Debian 12: 3.11): the venv must match it.
PYTHON_SYSTEM ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
SAMPLE_NAS := var/sample-nas
APT_RUN := orthanc orthanc-python python3-venv python3-smbc
APT_TEST := $(APT_RUN) dcmtk samba smbclient chromium
PYTEST_ARGS ?=

.PHONY: help deps deps-test run sample test test-unit test-integration test-e2e bench lint clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

$(VENV)/.deps: pyproject.toml
	$(call apt_install,$(APT_RUN))
	# system site packages: Debian's python3-smbc (libsmbclient) is used from the venv as inside Orthanc
	$(PYTHON_SYSTEM) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $$($(PYTHON_SYSTEM) tools/deps.py runtime test)
	touch $@

deps: $(VENV)/.deps ## install Orthanc, its Python plugin and the Python dependencies (.venv)

deps-test: deps ## deps + what the tests need (dcmtk, Samba, Chromium)
	$(call apt_install,$(APT_TEST))

sample: deps ## generate the sample NAS folder var/sample-nas (a few hundred synthetic DICOM files)
	@[ -d $(SAMPLE_NAS) ] || $(PY) bench/corpus.py $(SAMPLE_NAS) --sample

run: deps sample ## start Orthanc on port 8042 with the plugin on the sample NAS (foreground)
	mkdir -p var/orthanc
	/usr/sbin/Orthanc orthanc.json

test: deps-test ## install what tests need and run the whole suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: deps ## unit tests only (no Orthanc, no Samba)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: deps-test ## integration tests (real Orthanc, real smbd)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: deps-test ## the NAS panel in headless Chromium
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

bench: deps-test ## benchmarks: figures and ratios against simple baselines
	$(PY) bench/run.py

lint: deps ## ruff
	$(PY) -m ruff check plugin tests bench tools

clean: ## remove the venv and generated data
	rm -rf $(VENV) var .pytest_cache
