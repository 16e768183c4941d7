# Switchboard: the README's two commands are `make run` and `make test`.
# Every target installs what it needs when it is missing, idempotently.

CARGO ?= cargo
INTEROP_DIR := tests/interop
PLUGINS_DIR := target/plugins

.PHONY: run test build build-release interop-deps lint fmt clean

## Build the daemon (release) and start it on 127.0.0.1:18789.
run: build-release
	mkdir -p $(PLUGINS_DIR)
	./target/release/switchboard serve --plugins $(PLUGINS_DIR)

build-release:
	$(CARGO) build --release -p switchboard

build:
	$(CARGO) build -p switchboard

## The whole suite: unit tests, end-to-end tests against the real binary,
## and interop with the official OpenClaw client library.
test: build interop-deps
	$(CARGO) test --workspace

## npm packages for the interop test (@openclaw/gateway-client), from the lockfile.
interop-deps: $(INTEROP_DIR)/node_modules/.package-lock.json

$(INTEROP_DIR)/node_modules/.package-lock.json: $(INTEROP_DIR)/package.json $(INTEROP_DIR)/package-lock.json
	@command -v node >/dev/null || { echo "node is required for the interop test: apt-get install -y nodejs npm"; exit 1; }
	cd $(INTEROP_DIR) && npm ci --no-audit --no-fund
	@touch $@

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(INTEROP_DIR)/node_modules
