# Everything runs inside ./.venv, created on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install browser test test-pure bench lint docs demo screenshots clean

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

# The whole suite on the native extension, then the suite on the pure-Python
# twin, less the slow stress tests and the end-to-end runs of other systems
# (marked integration), whose outcome the twin does not change.
test: install browser
	$(PY) -m pytest
	SANDBOXQ_NO_EXTENSIONS=1 $(PY) -m pytest -m 'not slow and not integration' -q

test-pure: install
	SANDBOXQ_NO_EXTENSIONS=1 $(PY) -m pytest

bench: install
	$(PY) -m pytest benchmarks --benchmark-columns=min,median,ops -p no:timeout

lint: install
	$(VENV)/bin/ruff check sandboxq tests benchmarks examples docs
	$(VENV)/bin/ruff format --check sandboxq tests benchmarks examples docs
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

# The documentation site, into build/site (open build/site/index.html); any
# warning (a broken link, a missing docstring target...) fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

# The README's dashboard pictures, taken by the browser tests.
screenshots: install browser
	SANDBOXQ_SCREENSHOTS=docs/img $(PY) -m pytest tests/test_dashboard_browser.py -q

demo: $(PY)
	$(PIP) install --quiet -e '.[demo]'
	$(VENV)/bin/sandboxq demo

clean:
	rm -rf build *.egg-info sandboxq/_fast.c sandboxq/*.so .pytest_cache .mypy_cache
