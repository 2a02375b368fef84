# The two commands that do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
PORT   ?= 9000
DATA   ?= ./data
STAMP  := $(VENV)/.installed

.PHONY: run test build compile test-unit test-pure bench bench-quick bench-cluster debug clean system-deps fuzz soak cluster

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

system-deps:
	@# zlib headers for the CRC in flo_core.frame; redis-server/redis-cli for RESP tests and benches;
	@# openssl for the TLS tests' throwaway CA and `openssl s_client`; chromium (headless) for the
	@# web console's browser tests (Playwright drives Debian's chromium: no browser download);
	@# etcd-server for the cluster's coordination (tests and `make cluster` start their own members)
	@if [ ! -f /usr/include/zlib.h ] || ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
	    || ! command -v openssl >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 || ! command -v etcd >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends zlib1g-dev redis-server redis-tools openssl chromium etcd-server) >/dev/null \
	      || echo "warning: could not install zlib1g-dev/redis-server/redis-tools/openssl/chromium/etcd-server"; \
	  else echo "warning: install zlib1g-dev redis-server redis-tools openssl chromium etcd-server"; fi; \
	fi

$(STAMP): $(VENV)/bin/python pyproject.toml setup.py
	$(PIP) install -U pip setuptools wheel "Cython>=3.0,<4"
	FLO_NO_EXT=1 $(PIP) install -e ".[test]" --no-build-isolation
	@touch $(STAMP)

compile: $(STAMP)
	$(PY) setup.py -q build_ext --inplace -j 2

build: system-deps $(STAMP) compile

run: build
	@mkdir -p $(DATA)
	$(VENV)/bin/flo-server --host 127.0.0.1 --port $(PORT) --data-dir $(DATA)

# Both cores (pytest-xdist), one test file per worker at a time (module-scoped servers stay shared).
test: build
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile
	FLO_PUREPYTHON=1 $(PY) -m pytest -q -p no:cacheprovider -n 2 tests/unit

# Longer fuzzing than the suite's bounded run (docs/reliability.md): every hypothesis target with
# FUZZ_EXAMPLES examples (fresh random ones each run), the live-server test for FUZZ_LIVE_SECONDS,
# the pure codec too, then FUZZ_ATHERIS_SECONDS of coverage-guided atheris per target (0: skip;
# logs and crashing inputs in build/fuzz/).
FUZZ_EXAMPLES ?= 2000
FUZZ_LIVE_SECONDS ?= 30
FUZZ_ATHERIS_SECONDS ?= 20
FUZZ_TARGETS ?= frame payload resp jsonpath dispatch log
fuzz: build
	@mkdir -p build/fuzz
	FLO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FLO_FUZZ_LIVE_SECONDS=$(FUZZ_LIVE_SECONDS) FLO_FUZZ_STATS=build/fuzz/stats.json \
	  $(PY) -m pytest -q -p no:cacheprovider tests/fuzz
	FLO_PUREPYTHON=1 FLO_FUZZ_EXAMPLES=$$(( $(FUZZ_EXAMPLES) / 5 )) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz -m unit
	@if [ "$(FUZZ_ATHERIS_SECONDS)" != 0 ]; then \
	  mkdir -p build/fuzz; \
	  for t in $(FUZZ_TARGETS); do \
	    FLO_FUZZ_ARTIFACTS=build/fuzz $(PY) -m tests.fuzz.atheris_fuzz $$t -max_total_time=$(FUZZ_ATHERIS_SECONDS) \
	      -print_final_stats=1 > build/fuzz/$$t.log 2>&1; rc=$$?; \
	    echo "atheris $$t: $$(grep -o 'number_of_executed_units: [0-9]*' build/fuzz/$$t.log) in $(FUZZ_ATHERIS_SECONDS) s"; \
	    if [ $$rc != 0 ]; then tail -40 build/fuzz/$$t.log; echo "inputs: build/fuzz/crash-*"; exit 1; fi; \
	  done; \
	fi

# Soak (docs/reliability.md#soak): SOAK_SECONDS of mixed load (KV, queues, streams, RESP, actions) on a real
# flo-server with a kill -9 every ~SOAK_KILL_EVERY s, its data checked after each restart; report in build/soak.json.
SOAK_SECONDS ?= 1800
SOAK_KILL_EVERY ?= 20
soak: build
	@mkdir -p build
	$(PY) -m tests.reliability.soak --seconds $(SOAK_SECONDS) --kill-every $(SOAK_KILL_EVERY) --json build/soak.json

# A local cluster to try (docs/cluster.md): etcd plus 3 shards x 2 flo-server processes on 127.0.0.1:9100..,
# data in ./cluster-data; Ctrl-C stops it. `make run` stays one server.
cluster: build
	$(PY) -m flo_server.cluster.local --shards 3 --members 2 --dir ./cluster-data

bench: build
	$(PY) -m bench

bench-quick: build
	$(PY) -m bench --quick

# The cluster group (bench/cluster_bench.py): its own etcd and members on loopback, ~3 minutes on 2 cores.
bench-cluster: build
	$(PY) -m bench --only '^cluster/'

debug: system-deps $(STAMP)
	FLO_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force -j 2
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/integration

clean:
	rm -rf build $(VENV) flo_core/*.c flo_core/*.so flo_server/*.c flo_server/*.so flo_server/handlers/*.c flo_server/handlers/*.so bench/*.c bench/*.so *.egg-info
