# login_notification — build, test and demo. Run as root on Debian bookworm.
#   make test   installs what is missing, builds, runs every test
#   make demo   builds, installs, shows notifications arriving at a local Lambda
# The PostgreSQL to build and test against (scripts/test-all.sh sets all three per version).
PG_MAJOR ?= 15
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PG_BIN ?= $(dir $(PG_CONFIG))
PGRX_TEST_DATA ?= /tmp/ln-pgrx$(PG_MAJOR)
PYTEST_ARGS ?=

.PHONY: setup install install-test test test-all unit-test integration-test demo fmt clean

setup:
	./scripts/setup.sh

install: setup
	cargo pgrx install --pg-config $(PG_CONFIG)

# The integration tests install a build with the `fault_injection` feature (the
# login_notification.debug_fault setting); the default build never has it.
install-test: setup
	cargo pgrx install --pg-config $(PG_CONFIG) --features fault_injection

# Unit tests and #[pg_test]s: cargo pgrx test runs them in a throwaway cluster as the
# postgres user (PostgreSQL refuses root).
unit-test: setup
	rm -rf $(PGRX_TEST_DATA) && mkdir -p $(PGRX_TEST_DATA) && chown postgres:postgres $(PGRX_TEST_DATA)
	cargo pgrx test pg$(PG_MAJOR) --runas postgres --pgdata $(PGRX_TEST_DATA)

# Real logins against real clusters and a real HTTP endpoint speaking the Lambda Invoke API.
integration-test: install-test notifier-build
	PG_BIN=$(PG_BIN) .venv/bin/python -m pytest tests -v $(PYTEST_ARGS)

test: notifier-test unit-test integration-test

# Every supported PostgreSQL (14-18), one line per version at the end.
test-all:
	./scripts/test-all.sh

demo: install notifier-build
	.venv/bin/python demo/demo.py

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf .venv $(PGRX_TEST_DATA)

# Benchmark (bench/, BENCHMARKS.md): not part of `make test`; timings are never assertions.
# Measures the release build packaged in target/release/login_notification-pg15 (the build
# installed in $libdir is left alone); the run takes about 7 minutes on 2 cores.
#   make bench BENCH_ARGS='--rounds 1 --seconds 2 --no-write'   # a quick try
BENCH_ARGS ?=
.PHONY: bench package-release

package-release: setup
	cargo pgrx package --pg-config $(PG_CONFIG)

bench: package-release
	.venv/bin/python bench/bench.py $(BENCH_ARGS)

# The notifier Lambda function (notifier/) and its SAM template (deploy/). The end-to-end
# test and the demo run the debug build in ministack as a provided.al2023 `bootstrap`.
.PHONY: notifier-build notifier-test
notifier-build:
	cargo build -p notifier

notifier-test: setup
	cargo test -p notifier
	.venv/bin/cfn-lint deploy/template.yaml
