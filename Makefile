# fednb: one check script everywhere (CONVENTIONS 18). `make demo`, `make test`, `make check`.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fednb-installed

.PHONY: test-busy install labextension demo demo-headless test check lint lint-ts typecheck imports bench clean

$(STAMP): pyproject.toml scripts/setup.sh labextension/package.json labextension/yarn.lock
	bash scripts/setup.sh
	$(BIN)/python -m fednb.kernels --precompile  # robust strategies' kernels, once, not in a user's first round
	@touch $(STAMP)

install: $(STAMP)

# rebuild the JupyterLab extension after editing labextension/src (setup.sh builds it once)
labextension: install
	cd labextension && PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/jlpm build

demo: install
	$(BIN)/fednb demo

demo-headless: install
	$(BIN)/fednb demo --headless

# make test while one process per core spins the whole time (tests must not need an idle machine)
test-busy: install
	bash scripts/test-busy.sh

test: install
	bash scripts/test-deps.sh
	cd labextension && ../$(BIN)/jlpm test
	FEDNB_REQUIRE_BROWSER=1 FEDNB_REQUIRE_POSTGRES=1 FEDNB_REQUIRE_SANDBOX=1 $(BIN)/python -m pytest -n 3 --dist loadfile --durations=25
	NUMBA_ENABLE_CUDASIM=1 FEDNB_BACKEND=numba-cuda-sim FEDNB_REQUIRE_SANDBOX=1 $(BIN)/python -m pytest tests/cudasim

lint: install
	$(BIN)/ruff check fednb tests bench

# the JupyterLab extension's TypeScript: prettier and eslint (labextension/eslint.config.mjs)
lint-ts: install
	cd labextension && PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/jlpm lint:check

typecheck: install
	$(BIN)/mypy

imports: install
	$(BIN)/lint-imports

check: lint lint-ts typecheck imports

bench: install
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache labextension/node_modules labextension/lib fednb/labextensions
