# Two commands for a newcomer: `make run` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test test-tools bench lint clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

run: $(STAMP)
	mkdir -p data backups
	$(BIN)/meshd run --host 127.0.0.1 --port $${PORT:-4000} --data-dir ./data --backup-dir ./backups

# Commands the process tests call (the unit file check, the seed's curl and jq examples, node for
# the JavaScript outbox, the console's browser test, promtool for /metrics and the alert rules,
# the PostgreSQL server for the second backend's throwaway cluster, zsh for the completion
# script), installed from Debian's packages when missing. The browser is Debian's chromium:
# never `playwright install`.
test-tools:
	@missing=""; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v jq >/dev/null || missing="$$missing jq"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v zsh >/dev/null || missing="$$missing zsh"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

test: $(TEST_STAMP) test-tools
	$(BIN)/python -m pytest -q -rs --durations=25 -n 3 --maxschedchunk 1

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

lint: $(TEST_STAMP)
	$(BIN)/ruff check meshd tests bench

clean:
	rm -rf $(VENV) .pytest_cache

# The systemd service: user, /var/lib/meshd, a venv in /opt/meshd, /etc/meshd/meshd.toml, the
# unit. `make install DRY_RUN=1` prints the commands instead (docs/operations.md).
install:
	DRY_RUN=$(DRY_RUN) sh systemd/install.sh
