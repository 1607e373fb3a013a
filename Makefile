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
	ruff check hepfast tests bench fuzz
	cython-lint --max-line-length 100 ext/*/*.pyx ext/*/*.pxd

test: build lint
	$(PY) -m pytest -q -p no:cacheprovider

demo: build
	$(PY) -m hepfast.tools.demo

bench: build
	$(PY) bench/codec.py
	$(PY) bench/replay_bench.py
	$(PY) bench/driver.py

# Hostile input (docs/hardening.md). fuzz: every atheris target of fuzz/targets.py for FUZZ_SECONDS
# each (default 60) on a clang ASan+UBSan+coverage build (FUZZ_BUILD=plain: the normal build, Python
# coverage only); fails on a crash or a compiled/pure disagreement, keeping it in fuzz/artifacts/.
# asan: the extensions built with gcc -fsanitize=address,undefined (in build/sanitize/asan/, never
# over the normal build) and the test suite run under them; ASAN_TESTS narrows it.
FUZZ_SECONDS ?= 60
.PHONY: fuzz asan
fuzz: deps
	@sh scripts/ensure-fuzz-deps.sh || [ "$(FUZZ_BUILD)" = "plain" ]
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS) $(if $(FUZZ_BUILD),--build $(FUZZ_BUILD))

asan: deps
	@sh scripts/ensure-fuzz-deps.sh --asan
	$(PY) fuzz/sanitize.py asan $(ASAN_TESTS)

clean:
	rm -rf build ext/generated $$(find hepfast -name "*.so") ext/*/*.c ext/*/*.html bench/c_forward bench/c_sendmmsg
