# orthanc-nas — every task a person or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Python that Orthanc's Python plugin embeds (Debian 12: 3.11): the venv must match it.
PYTHON_SYSTEM ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
SAMPLE_NAS := var/sample-nas
APT_RUN := orthanc orthanc-python python3-venv libsmbclient
APT_TEST := $(APT_RUN) dcmtk samba smbclient chromium debootstrap python3-yaml orthanc-webviewer postgresql
PYTEST_ARGS ?=

# Newer Orthancs run from trees of newer Debians made once with debootstrap (tools/debian-tree.sh):
# Orthanc 1.12 + Python plugin 5.0 from Debian 13 (suite trixie, Python 3.13), Orthanc 1.13 + Python
# plugin 7 from Debian unstable (suite sid, Python 3.14). The dependencies of each tree's Python go to
# .venv-<its version> (pip --target from the host: nothing is downloaded from inside a tree).
# plugin/nas_plugin.py picks the venv of the Python it runs in.
DEBIAN13 ?= var/debian13
DEBIAN_SID ?= var/debian-sid
TREE_1.12 = $(DEBIAN13)
SUITE_1.12 := trixie
PYTHON_1.12 := 3.13
TREE_1.13 = $(DEBIAN_SID)
SUITE_1.13 := sid
PYTHON_1.13 := 3.14
# The Orthancs the integration tests run against (the harness reads ORTHANC_TARGET).
ORTHANC_TARGETS ?= 1.10 1.12 1.13

.PHONY: help deps deps-test orthanc-1.12 orthanc-1.13 run run-1.12 run-1.13 sample test test-unit test-integration test-e2e bench \
	lint clean

help: ## list the targets
	@grep -hE '^[a-z0-9.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

$(VENV)/.deps: pyproject.toml
	$(call apt_install,$(APT_RUN))
	# system site packages: the venv sees what Orthanc's embedded Python sees
	$(PYTHON_SYSTEM) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r <($(PYTHON_SYSTEM) tools/deps.py runtime test)
	touch $@

deps: $(VENV)/.deps ## install Orthanc, its Python plugin and the Python dependencies (.venv)

deps-test: deps ## deps + what the tests need (dcmtk, Samba, Chromium, debootstrap, PyYAML)
	$(call apt_install,$(APT_TEST))

orthanc-1.12: ## Orthanc 1.12 in the Debian 13 tree var/debian13 (made once, ~1 min) and .venv-3.13
orthanc-1.13: ## Orthanc 1.13 in the Debian unstable tree var/debian-sid (made once, ~1 min) and .venv-3.14
orthanc-1.12 orthanc-1.13: deps
	$(call apt_install,debootstrap)
	tools/debian-tree.sh build $(TREE_$(@:orthanc-%=%)) $(SUITE_$(@:orthanc-%=%))
	@python=$$(head -1 $(TREE_$(@:orthanc-%=%))/.orthanc-nas-ready); [ "$$python" = $(PYTHON_$(@:orthanc-%=%)) ] || \
	  { echo "the tree $(TREE_$(@:orthanc-%=%)) has Python $$python, not $(PYTHON_$(@:orthanc-%=%))"; exit 1; }
	@$(MAKE) --no-print-directory .venv-$(PYTHON_$(@:orthanc-%=%))/.deps TREE=$(TREE_$(@:orthanc-%=%))

# .venv-3.13/.deps, .venv-3.14/.deps: the runtime dependencies for the Python of the tree TREE
.venv-%/.deps: pyproject.toml
	rm -rf .venv-$*
	$(PY) -m pip install -q --target .venv-$*/lib/python$*/site-packages --python-version $* --only-binary=:all: \
	  -r <($(PYTHON_SYSTEM) tools/deps.py runtime)
	# check that they import in the tree's Python, and that its libsmbclient loads for the SMB source
	tools/debian-tree.sh run $(TREE) -- /usr/bin/python3 -c \
	  'import sys; sys.path[:0] = ["$(abspath .venv-$*/lib/python$*/site-packages)", "$(abspath plugin)"]; \
	   import pydicom, zipstream, waitress, pynetdicom, psycopg, psycopg_pool; from orthanc_nas.sources import libsmbclient; libsmbclient.load()'
	# compiled by the tree's own Python (pip compiled them for the host's), so Orthanc does not compile them at each start
	tools/debian-tree.sh run $(TREE) -- /usr/bin/python3 -m compileall -q -j 0 $(abspath .venv-$*/lib/python$*/site-packages)
	touch $@

sample: deps ## generate the sample NAS folder var/sample-nas (a few hundred synthetic DICOM files)
	@[ -d $(SAMPLE_NAS) ] || $(PY) bench/corpus.py $(SAMPLE_NAS) --sample

run: deps sample ## start Orthanc on port 8042 with the plugin on the sample NAS (foreground)
	mkdir -p var/orthanc
	/usr/sbin/Orthanc orthanc.json

run-1.12: ## the same with Orthanc 1.12 from the Debian 13 tree
run-1.13: ## the same with Orthanc 1.13 from the Debian unstable tree
run-1.12 run-1.13: run-%: orthanc-% sample
	mkdir -p var/orthanc
	tools/debian-tree.sh run $(TREE_$*) --cd $(CURDIR) -- /usr/sbin/Orthanc $(CURDIR)/orthanc.json

# The integration tier once for each Orthanc of ORTHANC_TARGETS, setting `status=1` if a run fails.
# A failed integration test is run once more (and reported as rerun, "R"): the Samba 4.17 that serves
# as the test NAS panics now and then under load, dropping a connection in the middle of a test.
# The first attempt's failure, with the warnings and errors of the test's Orthanc, stays in the run's
# log (--rerun-show-tracebacks; see tests/integration/conftest.py): a rerun explains itself.
INTEGRATION_RUNS = for target in $(ORTHANC_TARGETS); do \
	  echo "== integration tests on Orthanc $$target"; \
	  ORTHANC_TARGET=$$target ORTHANC_DEBIAN13=$(abspath $(DEBIAN13)) ORTHANC_DEBIAN_SID=$(abspath $(DEBIAN_SID)) \
	    $(PY) -m pytest tests/integration --reruns 1 --reruns-delay 2 -raR --rerun-show-tracebacks $(PYTEST_ARGS) || status=1; \
	done
ORTHANC_TREES_WANTED := $(addprefix orthanc-,$(filter 1.12 1.13,$(ORTHANC_TARGETS)))

test: deps-test $(ORTHANC_TREES_WANTED) ## the whole suite: unit and e2e once, integration on Orthanc 1.10, 1.12 and 1.13
	@status=0; \
	$(PY) -m pytest --ignore=tests/integration $(PYTEST_ARGS) || status=1; \
	$(INTEGRATION_RUNS); \
	exit $$status

test-unit: deps ## unit tests only (no Orthanc, no Samba)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: deps-test $(ORTHANC_TREES_WANTED) ## integration tests (real Orthanc, real smbd) on ORTHANC_TARGETS
	@status=0; $(INTEGRATION_RUNS); exit $$status

test-e2e: deps-test ## the NAS panel in headless Chromium
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

bench: deps-test ## benchmarks: figures and ratios against simple baselines
	$(PY) bench/run.py

lint: deps ## ruff
	$(PY) -m ruff check plugin tests bench tools

clean: ## remove the venvs and generated data (the Debian trees too)
	tools/debian-tree.sh remove $(DEBIAN13)
	tools/debian-tree.sh remove $(DEBIAN_SID)
	rm -rf $(VENV) .venv-* var .pytest_cache
