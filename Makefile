# One entry point for people and CI: `make serve`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup peers serve test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

## The real counterparts tests run against (pinned in tests/peers/); npm ones skipped without npm.
PEERS := .peers/npm/.installed $(patsubst tests/peers/pypi/%.txt,.peers/pypi/%/.installed,$(wildcard tests/peers/pypi/*.txt))
.peers/npm/.installed: tests/peers/npm.txt
	@if command -v npm >/dev/null; then \
		specs=$$(grep -v '^\s*\(#\|$$\)' tests/peers/npm.txt); \
		if [ -n "$$specs" ]; then mkdir -p .peers/npm && \
			npm install --silent --no-save --no-audit --no-fund --prefix .peers/npm $$specs || exit 1; fi; \
		mkdir -p .peers/npm && touch $@; \
	else echo "npm not installed: tests against real CLIs will be skipped"; fi

## Each PyPI list gets a virtualenv of its own: their pins must not meet the test venv's, nor each other's.
.peers/pypi/%/.installed: tests/peers/pypi/%.txt
	rm -rf $(@D)
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/python -m pip install --quiet --upgrade pip
	$(@D)/bin/python -m pip install --quiet -r $<
	touch $@

peers: $(PEERS)

## Run the daemon in the foreground with defaults (no config file needed).
serve: setup
	$(VENV)/bin/broker serve

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m tests.installed_tree .layout
	cd .layout && $(abspath $(VENV))/bin/mypy --config-file ../pyproject.toml
	cd .layout && PYTHONPATH=. $(abspath $(VENV))/bin/lint-imports ../pyproject.toml

## Lint, type-check, then the whole suite; keyring tests run on a real Secret Service
## when dbus and gnome-keyring are installed (CI requires them: BROKER_REQUIRE_KEYRING=1).
test: lint peers
	@if command -v dbus-run-session >/dev/null && command -v gnome-keyring-daemon >/dev/null; then \
		runner=tests/run-with-keyring; else runner=; \
		echo "dbus/gnome-keyring not installed: keyring tests will be skipped"; fi; \
	$$runner $(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests ran"; status=0; fi; exit $$status

## The benchmark measures what users install: broker from a wheel (not editable) in a
## virtualenv of its own, rebuilt from the tree at each run; LiteLLM's proxy, pinned, beside it.
BENCH_VENV ?= .bench-venv
LITELLM_VENV ?= .bench-litellm
$(BENCH_VENV)/.created:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	touch $@
$(LITELLM_VENV)/.installed: bench/litellm.txt
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	if $(LITELLM_VENV)/bin/python -m pip install --quiet -r bench/litellm.txt; then touch $@; \
	else echo "LiteLLM did not install: the bench skips its figures"; fi

bench: $(BENCH_VENV)/.created $(LITELLM_VENV)/.installed
	rm -rf build
	$(BENCH_VENV)/bin/python -m pip install --quiet . 2>$(BENCH_VENV)/install.log \
		&& $(BENCH_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps . 2>>$(BENCH_VENV)/install.log \
		|| { cat $(BENCH_VENV)/install.log; exit 1; }
	rm -rf build
	BENCH_LITELLM=$(LITELLM_VENV) $(BENCH_VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(LITELLM_VENV) .peers .pytest_cache .mypy_cache .ruff_cache *.egg-info
