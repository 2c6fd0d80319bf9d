# rustbridge — see README.md.
PLUGIN      ?= rustbridge/rustbridge:latest
DOCKERD     ?= dockerd
DATA_ROOT   ?= /var/lib/docker
REGISTRY    ?=
TARGET      := x86_64-unknown-linux-gnu
# Cargo's build directory (a worktree may point CARGO_TARGET_DIR elsewhere).
CARGO_TARGET_DIR ?= target
STATIC_BIN  := $(CARGO_TARGET_DIR)/$(TARGET)/release/rustbridge
PLUGIN_DIR  := plugin/build
BINDIR      ?= /usr/local/bin
UNITDIR     ?= /etc/systemd/system

.PHONY: all build static rootfs deps dockerd plugin install uninstall publish demo demo-swarm test test-unit test-e2e test-engines bench bench-smoke bench-images bench-ipam clean lint fmt fuzz install-cli install-service uninstall-service

all: build

build:
	cargo build --release

# Statically linked (glibc, crt-static): the plugin rootfs needs no libc for it.
static:
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target $(TARGET)

deps:
	scripts/install-deps.sh

dockerd: deps
	scripts/dockerd.sh start $(DOCKERD) $(DATA_ROOT)

# The managed plugin's directory (config.json + rootfs), no dockerd needed.
rootfs: static
	scripts/build-rootfs.sh $(STATIC_BIN) $(PLUGIN_DIR)

plugin: rootfs
	scripts/plugin.sh create $(PLUGIN) $(PLUGIN_DIR)

install: dockerd plugin
	scripts/plugin.sh enable $(PLUGIN)

uninstall:
	scripts/plugin.sh remove $(PLUGIN)

# The command line on the host (`rustbridge status`, `gc`, `version`): the
# same static binary as the plugin's, copied to $(BINDIR).
install-cli: static
	install -D -m 0755 $(STATIC_BIN) $(DESTDIR)$(BINDIR)/rustbridge

# Unmanaged mode: rustbridge as a systemd service serving the legacy socket.
install-service: install-cli
	install -D -m 0644 plugin/rustbridge.service $(DESTDIR)$(UNITDIR)/rustbridge.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemctl daemon-reload && systemctl enable --now rustbridge.service; \
	else echo "installed $(UNITDIR)/rustbridge.service; systemd is not running here: start it with systemctl enable --now rustbridge"; fi

uninstall-service:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now rustbridge.service || true; fi
	rm -f $(DESTDIR)$(UNITDIR)/rustbridge.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

publish: rootfs
	@test -n "$(REGISTRY)" || { echo "usage: make publish REGISTRY=host:port"; exit 2; }
	scripts/plugin.sh publish $(REGISTRY)/$(PLUGIN) $(PLUGIN_DIR)

demo: install
	scripts/test-image.sh
	PREFIX=demo tests/e2e/user_story.sh --demo

# The multi-host story on a swarm lab of three daemons (scripts/swarm-lab.sh):
# the multi-host suite with DEMO=1, which prints each command of the story as
# typed on its node (the setting, network create, service create, run, ping by
# name across hosts, rm, nothing left) with its output, among its checks.
demo-swarm: deps rootfs
	DEMO=1 tests/e2e/swarm.sh

test-unit: deps
	cargo test -- --test-threads=2

test-e2e: install
	scripts/test-image.sh
	tests/e2e/run.sh

test: test-unit test-e2e

# In-process fuzzing of the request router (tests/fuzz.rs) for FUZZ_SECONDS,
# release build; `make test-unit` (CI) runs the same test for its default 30 s.
FUZZ_SECONDS ?= 300
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) cargo test --release --test fuzz -- --nocapture

# The gates .ci/run passes first: one format, no clippy warning in any target.
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt --all

# The e2e user story, firewall and options suites on Docker 26.1 (Debian 13)
# and 28.x (Debian unstable), each run from its extracted .deb with its own data root.
ENGINES ?= trixie sid
test-engines: deps rootfs
	for suite in $(ENGINES); do scripts/engine.sh run $$suite scripts/e2e-on-engine.sh || exit 1; done

# The benchmark report of issue 13 (bench/run.py): rustbridge against Docker's
# built-in bridge in one run, and issue 14's two hosts against Docker's overlay
# (the swarm lab, plugin/build on its nodes), written to
# bench/results/latest.{md,json,png} and README.md's table; about 10 minutes.
# It touches the host's dockerd, plugin and firewall: run it alone (helpers:
# under flock /tmp/rb-host.lock; the swarm measure takes /tmp/rb-lab.lock itself,
# or runs under a caller holding it).
# bench-smoke: every measure with tiny counts (~80 s, bench/results/smoke/),
# then a check that the report is well-formed; timings are never judged.
bench bench-smoke: export WITH_BENCH=1
# Debian's python3, where install-deps puts matplotlib (not a python3 of one's own on PATH).
BENCH_PYTHON ?= /usr/bin/python3
bench: install bench-images
	$(BENCH_PYTHON) bench/run.py
bench-smoke: install bench-images
	BENCH_QUICK=1 $(BENCH_PYTHON) bench/run.py
	$(BENCH_PYTHON) bench/run.py --check bench/results/smoke

bench-images:
	scripts/test-image.sh
	scripts/bench-image.sh

# The IPAM allocator and durable RequestAddress calls, in process (no host access).
bench-ipam:
	cargo bench --bench ipam

clean:
	cargo clean
	rm -rf $(PLUGIN_DIR)
