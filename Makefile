# The two commands of the README: `make demo` runs the main job, `make test` runs the checks.
# Each creates the virtual environment in .venv when it is missing and installs what it needs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test stress chaos kill-files bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip > $(VENV)/install.log 2>&1 \
	  && $(BIN)/python -m pip install -e '.[test]' >> $(VENV)/install.log 2>&1 \
	  || { cat $(VENV)/install.log; echo "installing ringflow failed; see above"; exit 1; }
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ringflow run topology/examples/video-site.yaml

test: $(STAMP)
	$(BIN)/ruff check actors topology sim tests
	$(BIN)/ruff format --check actors topology sim tests
	$(BIN)/mypy
	$(BIN)/pytest

# Not part of 'make test': every kill test repeated 20 times under CPU load (~35 min).
stress: $(STAMP)
	$(BIN)/python tests/stress.py --repeat 20

# Not part of 'make test': 1,000 seeded fault schedules per example topology (~17 min).
chaos: $(STAMP)
	for t in video-site video-site-split ugc relay relay-topic; do \
	  $(BIN)/ringflow chaos topology/examples/$$t.yaml --schedules 1000 --keep-going || exit 1; \
	done

# Not part of 'make test': the file pipeline killed with SIGKILL 20 times over 1 GB of files
# written while it runs; the totals are compared with awk's (~15 min).
kill-files: $(STAMP)
	$(BIN)/python -m sim.kill_files /tmp/ringflow-kill-files --size 1G --kills 20

bench: $(STAMP)
	$(BIN)/ringflow bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
