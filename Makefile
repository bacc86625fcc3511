# deossfs: `make run` starts a devnet and shows the main job; `make test` passes the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEVNET ?= .devnet
APT_PACKAGES := fuse3 libfuse3-dev libisal2 pkg-config gcc python3-dev python3-venv rsync attr libglib2.0-bin curl rclone restic s3fs chromium chromium-driver
# installed without their recommendations: gvfs (the trash:// backend the trash tests drive
# through `gio`) would bring disk tools and file system drivers
APT_PACKAGES_LEAN := gvfs dbus
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install system-packages venv devchain run test lint bench screenshots clean devnet-down

# byte-compiled up front: the CLI starts ~0.05 s sooner, and an environment with
# PYTHONDONTWRITEBYTECODE (CI's) would otherwise compile every module in every command
install: system-packages venv
	@$(PY) -m compileall -q deossfs

# apt only when something is missing, so a second run is quick and offline
system-packages:
	@missing=""; lean=""; for p in $(APT_PACKAGES) $(APT_PACKAGES_LEAN); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" && continue; \
	  case " $(APT_PACKAGES_LEAN) " in *" $$p "*) lean="$$lean $$p";; *) missing="$$missing $$p";; esac; \
	done; \
	if [ -n "$$missing$$lean" ]; then \
	  echo "installing:$$missing$$lean"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq || exit 1; \
	  if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null || exit 1; fi; \
	  if [ -n "$$lean" ]; then DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$lean >/dev/null || exit 1; fi; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

# the real CESS runtime for tests/conformance (chopsticks + node 22 from npm), installed
# once into ~/.cache/deossfs/cess-devchain; a second run does nothing
devchain: venv
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq npm >/dev/null; }
	@$(PY) -m deossfs.devnet_cess install

run: install
	$(VENV)/bin/deossfs devnet up --dir $(DEVNET) --gateway
	@bash contrib/demo.sh $(DEVNET)

# unmount first (waits for the mount's pending uploads; nothing mounted is fine), then the nodes
devnet-down:
	-@test ! -x $(VENV)/bin/deossfs || $(VENV)/bin/deossfs umount $(DEVNET)/mnt 2>&1 | grep -v 'is not mounted'; true
	-$(VENV)/bin/deossfs devnet down --dir $(DEVNET)

# DEOSSFS_REQUIRE_CESS=1: the conformance suite fails rather than skips without the runtime
test: install devchain
	DEOSSFS_REQUIRE_CESS=1 $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check deossfs tests benchmarks

bench: install
	$(PY) benchmarks/run.py
	$(PY) benchmarks/mount.py
	$(PY) benchmarks/gateway.py
	$(PY) benchmarks/s3.py
	$(PY) benchmarks/console.py

# the browser tests, saving their screenshots as docs/console.md's pictures
screenshots: install
	DEOSSFS_SCREENSHOTS=$(CURDIR)/docs/console $(PY) -m pytest -q -p no:cacheprovider tests/gateway/test_console.py

clean: devnet-down
	@! grep -qs " $(abspath $(DEVNET))/mnt " /proc/self/mounts || \
	  { echo "$(DEVNET)/mnt is still mounted; not deleting through it"; exit 1; }
	rm -rf $(DEVNET) $(VENV) *.egg-info
