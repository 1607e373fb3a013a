# hepfast: `make demo` runs the switch on the bundled config with real traffic; `make test` runs
# everything CI runs. Both install what is missing first (scripts/ensure-deps.sh, idempotent).
PY ?= python3
export PYTHONPATH := $(CURDIR)

.PHONY: deps build debug test lint demo bench clean

deps:
	@sh scripts/ensure-deps.sh

build: deps
	$(PY) setup.py -q build_ext --inplace

# HEP_DEBUG build with `cython -a` annotations in ext/*.html (yellow lines = Python interaction).
debug: deps
	HEPFAST_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force

lint:
	ruff check hepfast tests bench
	cython-lint --max-line-length 100 ext/*/*.pyx ext/*/*.pxd

test: build lint
	$(PY) -m pytest -q -p no:cacheprovider

demo: build
	$(PY) -m hepfast.tools.demo

bench: build
	$(PY) bench/codec.py
	$(PY) bench/replay_bench.py
	$(PY) bench/driver.py

clean:
	rm -rf build ext/generated $$(find hepfast -name "*.so") ext/*/*.c ext/*/*.html bench/c_forward bench/c_sendmmsg
