# DutyWatch developer targets. `make test` is what CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test deps lint typecheck unit bytecode bench check clean

$(STAMP): setup.py pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/dutywatch run --config agent/data/demo-agent.yaml --state-dir var

lint: $(STAMP)
	$(BIN)/ruff check agent collectors tests setup.py

typecheck: $(STAMP)
	$(BIN)/mypy

# The tests start the agent and its CLI in thousands of subprocesses: compile the sources once, since an
# environment with PYTHONDONTWRITEBYTECODE set would otherwise recompile every module in every one of them.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 agent collectors tests >/dev/null

unit: $(STAMP) bytecode
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

# The Debian packages the tests use (promtool, amtool, debootstrap, lintian, ...): installed when
# root with apt-get, otherwise the command that does is printed and make stops.
deps:
	@.ci/deps

# mypy (uncached on a clean clone: 20-30 s) runs beside the tests instead of before them; its verdict is
# printed after the tests' and either failing fails the target.
test: deps lint bytecode
	@echo "$(BIN)/mypy  (beside the tests; its output follows theirs)"; \
	$(BIN)/mypy >$(VENV)/mypy.log 2>&1 & typing=$$!; \
	echo '$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)'; \
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS); tests=$$?; \
	wait $$typing; typed=$$?; \
	echo "$(BIN)/mypy"; cat $(VENV)/mypy.log; \
	[ $$tests -eq 0 ] && [ $$typed -eq 0 ]

bench: $(STAMP)
	@for b in tests/bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

check: $(STAMP)
	$(BIN)/dutywatch check --config agent/data/demo-agent.yaml

clean:
	rm -rf $(VENV) build *.egg-info var .mypy_cache .ruff_cache .pytest_cache

# OS packages (packaging/build.py): dist/dutywatch_<version>_<arch>.deb and the rpm.
.PHONY: package rpm package-test
package:
	$(PY) packaging/build.py deb

rpm:
	$(PY) packaging/build.py rpm

# Only the packaging tests: build both packages, lint them, install the deb in a
# cached debootstrap root (/var/cache/dutywatch-test/bookworm.tar). Part of `make test` too.
package-test: $(STAMP)
	$(BIN)/pytest -q tests/packaging

.PHONY: fuzz reliability

# Hostile-input fuzzing: 10,000 generated cases per loader (a few hundred run in `make test`),
# then a coverage-guided atheris run where atheris is installed.
fuzz: $(STAMP)
	DW_FUZZ_EXAMPLES=10000 $(BIN)/pytest -q -p no:cacheprovider tests/fuzz
	@if $(BIN)/python -c "import atheris" 2>/dev/null; then \
		$(BIN)/python tests/fuzz/atheris_loaders.py -runs=10000; \
	else echo "atheris not installed ($(BIN)/pip install atheris): coverage-guided run skipped"; fi

# Every reliability scenario, the long storm included (DW_STORM_SECONDS, default 20); prints figures.
reliability: $(STAMP)
	$(BIN)/pytest -q -s tests/reliability
