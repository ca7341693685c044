# Tidings: `make run` for a running system, `make test` for the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
EMBEDDED_REDIS_PORT ?= 6380
PORT ?= 8000

BENCH_VENV ?= .venv-bench

.PHONY: run run-proxy nginx tools test test-fast lint translations bench bench-quick bench-proxy faults faults-quick clean

$(VENV)/.run-deps: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-deps: $(VENV)/.run-deps requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

run: $(VENV)/.run-deps
	@bash scripts/run.sh

# `make run` behind Debian's nginx: TLS + HTTP/2 on https://127.0.0.1:8443 (deploy/nginx/).
run-proxy: $(VENV)/.run-deps nginx
	@TIDINGS_PROXY=1 bash scripts/run.sh

# Debian's nginx (and openssl for the self-signed certificate); needs root, like `make tools`.
nginx:
	test -x /usr/sbin/nginx -a -x /usr/bin/openssl || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl)

# Debian's chromium, nginx, openssl and redis-server 7 for the browser, proxy and cluster tests:
# installed when run as root with apt, else named (their tests then skip, saying so).
tools: $(VENV)/.run-deps
	@$(PY) -m harness.tools

# The whole suite: the page script's browser-free parts with node's own runner, then pytest
# against Redis and PostgreSQL servers it starts itself unless TEST_REDIS_URL / TEST_DATABASE_URL
# name others. PYTEST_ARGS adds options (CI: the slowest tests' durations).
test: $(VENV)/.dev-deps tools
	node --test tests/js/
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit loop's tier: the JS and unit tests (fakeredis, SQLite and the session's PostgreSQL).
test-fast: $(VENV)/.dev-deps
	node --test tests/js/
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# ruff, then import-linter's contracts (pyproject.toml): flask_tidings never imports the site, the
# site uses only its public API, and the site's modules import each other without cycles.
lint: $(VENV)/.dev-deps
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

# After changing a text: extract every translatable string, merge it into each language's .po
# (edit those: tests/unit/test_i18n.py fails on any left untranslated), compile the .mo files.
translations: $(VENV)/.run-deps
	$(VENV)/bin/pybabel extract -F babel.cfg -k _l -k lazy_gettext -k ngettext_raw:1,2 --no-location \
	  -o app/translations/messages.pot .
	$(VENV)/bin/pybabel update -i app/translations/messages.pot -d app/translations --no-fuzzy-matching
	$(VENV)/bin/pybabel compile -d app/translations

# The benchmark has its own environment: the app plus the Flask-SSE peer and matplotlib.
$(BENCH_VENV)/.deps: requirements.txt bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -r bench/requirements.txt
	touch $@

bench: $(BENCH_VENV)/.deps
	$(BENCH_VENV)/bin/python -m bench.run

bench-quick: $(BENCH_VENV)/.deps
	$(BENCH_VENV)/bin/python -m bench.run --quick

# Through nginx: publish→event beside direct, and the slow-body attack (docs/benchmarks/proxy.md).
bench-proxy: $(BENCH_VENV)/.deps nginx
	$(BENCH_VENV)/bin/python -m bench.proxy

# The fault matrix on SQLite and on a private PostgreSQL server (docs/reliability.md); the quick
# one (CI) has shorter outages and no 20,000-stream deploy, and fails on any loss.
faults: $(VENV)/.dev-deps
	$(PY) -m bench.faults

faults-quick: $(VENV)/.dev-deps
	$(PY) -m bench.faults --quick

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache
