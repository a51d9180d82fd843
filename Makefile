# bwbpf — `make` lists the targets. `make test` sets everything up on a fresh Debian 12
# machine (as root) and runs every test tier.

PYTHON  ?= /usr/bin/python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
ARGS    ?=
PYTEST  := $(PY) -m pytest $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help setup host venv test test-unit test-bpf test-integration test-faults lint fix bench demo clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

host: ## Debian packages, kernel headers for bcc, bpffs (needs root)
	@sh scripts/setup-host.sh

$(VENV)/.done: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@echo "setup: installing bwbpf (editable) with its test extras into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@$(PY) -c 'import bcc' || { echo "setup: $(VENV) cannot import bcc (python3-bpfcc)"; exit 1; }
	@touch $@

venv: $(VENV)/.done ## the virtual environment (sees Debian's bcc)

setup: host venv ## everything the tests and the demo need

test: setup lint ## set up, lint, then run every tier: unit, bpf, integration, faults
	$(PYTEST) tests/unit tests/bpf tests/integration tests/faults

test-unit: venv ## pure logic; no root needed
	$(PYTEST) tests/unit

test-bpf: setup ## load the programs, feed packets through BPF_PROG_TEST_RUN (root)
	$(PYTEST) tests/bpf

test-integration: setup ## namespaces, veths, real traffic, real HTB (root)
	$(PYTEST) tests/integration

test-faults: setup ## a real daemon under faults: signal storms, broken reloads, full disks (root)
	$(PYTEST) tests/faults

lint: venv ## ruff check and format check; C with -Wall -Werror via the bpf tier
	$(VENV)/bin/ruff check bwbpf tests bench vm scripts
	$(VENV)/bin/ruff format --check bwbpf tests bench vm scripts

fix: venv ## ruff fix and format
	$(VENV)/bin/ruff check --fix bwbpf tests bench vm scripts
	$(VENV)/bin/ruff format bwbpf tests bench vm scripts

bench: setup ## performance figures as ratios to baselines, JSON in bench/results.json
	$(PY) bench/run.py --out bench/results.json

demo: setup ## three slices in namespaces, the daemon, stat, a capped slice and its mail
	$(PY) -m bwbpf.demo

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache build *.egg-info

# make install: bwbpf gets its own virtual environment ($(INSTALL_VENV), --system-site-packages
# so that it sees Debian's bcc, which is not on PyPI; pip never touches Debian's Python) and
# $(PREFIX)/bin/bwbpf links to it. The BPF C sources go to $(PREFIX)/share/bwbpf/bpf, where
# bwbpf/datapath.py looks (so PREFIX is /usr/local or /usr). The package is built from a
# copy of the sources, so a read-only checkout works. DESTDIR stages it all under another
# root; the venv's scripts are rewritten to run from their final place. Offline (a VM with
# no network): INSTALL_PIP_ARGS="--no-index --find-links DIR" with the wheels in DIR.
PREFIX       ?= /usr/local
INSTALL_VENV ?= /opt/bwbpf
UNITDIR      ?= $(PREFIX)/lib/systemd/system
INSTALL_PIP_ARGS ?=
.PHONY: install uninstall

install: ## install: venv in /opt/bwbpf, bin, BPF sources, unit, man page, Prometheus examples, /etc/bwbpf
	@set -e; venv='$(DESTDIR)$(INSTALL_VENV)'; src=$$(mktemp -d); trap 'rm -rf "$$src"' EXIT; \
	cp -r pyproject.toml README.md bwbpf "$$src/"; \
	test -x "$$venv/bin/python" || $(PYTHON) -m venv --system-site-packages "$$venv"; \
	echo "install: bwbpf into $$venv"; \
	"$$venv/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location $(INSTALL_PIP_ARGS) "$$src"; \
	"$$venv/bin/python" -c 'import bcc' 2>/dev/null || \
	  echo "install: warning: $$venv cannot import bcc: apt-get install python3-bpfcc"; \
	if [ -n '$(DESTDIR)' ]; then for f in "$$venv"/bin/*; do \
	  if [ ! -L "$$f" ] && grep -qI "$$venv" "$$f"; then sed -i "s|$$venv|$(INSTALL_VENV)|g" "$$f"; fi; \
	done; fi; \
	install -d '$(DESTDIR)$(PREFIX)/bin' '$(DESTDIR)$(PREFIX)/share/bwbpf/bpf' '$(DESTDIR)$(UNITDIR)'; \
	ln -sfn '$(INSTALL_VENV)/bin/bwbpf' '$(DESTDIR)$(PREFIX)/bin/bwbpf'; \
	install -m 644 bpf/*.c bpf/*.h '$(DESTDIR)$(PREFIX)/share/bwbpf/bpf/'; \
	install -d '$(DESTDIR)$(PREFIX)/share/bwbpf/prometheus/targets'; \
	install -m 644 deploy/prometheus/*.yml deploy/prometheus/*.json \
	  '$(DESTDIR)$(PREFIX)/share/bwbpf/prometheus/'; \
	install -m 644 deploy/prometheus/targets/*.yml '$(DESTDIR)$(PREFIX)/share/bwbpf/prometheus/targets/'; \
	install -d '$(DESTDIR)$(PREFIX)/share/man/man8'; \
	install -m 644 deploy/bwbpf.8 '$(DESTDIR)$(PREFIX)/share/man/man8/bwbpf.8'; \
	sed 's|/usr/local/bin/bwbpf|$(PREFIX)/bin/bwbpf|g' deploy/systemd/bwbpf.service \
	  > '$(DESTDIR)$(UNITDIR)/bwbpf.service'; \
	chmod 644 '$(DESTDIR)$(UNITDIR)/bwbpf.service'; \
	echo "install: $(PREFIX)/bin/bwbpf, $(PREFIX)/share/bwbpf/{bpf,prometheus}, bwbpf(8), $(UNITDIR)/bwbpf.service"; \
	install -d -m 755 '$(DESTDIR)/etc/bwbpf' '$(DESTDIR)/var/lib/bwbpf'; \
	if [ -e '$(DESTDIR)/etc/bwbpf/bwbpf.toml' ]; then echo "install: kept /etc/bwbpf/bwbpf.toml"; \
	else install -m 644 deploy/bwbpf.toml '$(DESTDIR)/etc/bwbpf/bwbpf.toml'; \
	  echo "install: /etc/bwbpf/bwbpf.toml (edit it first: interface, line_rate, slices)"; fi; \
	test -e "/lib/modules/$$(uname -r)/build" || \
	  echo "install: warning: no kernel headers for bcc: make host, or apt-get install linux-headers-$$(uname -r)"; \
	if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	echo "install: next: bwbpf check && systemctl enable --now bwbpf"

uninstall: ## remove what install put; keeps /etc/bwbpf, /var/lib/bwbpf and the shaping
	@set -e; \
	if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ] && systemctl cat bwbpf.service >/dev/null 2>&1; then \
	  systemctl disable --now bwbpf.service; fi; \
	rm -f '$(DESTDIR)$(UNITDIR)/bwbpf.service'; \
	link='$(DESTDIR)$(PREFIX)/bin/bwbpf'; \
	if [ "$$(readlink "$$link")" = '$(INSTALL_VENV)/bin/bwbpf' ]; then rm -f "$$link"; fi; \
	rm -rf '$(DESTDIR)$(PREFIX)/share/bwbpf'; \
	rm -f '$(DESTDIR)$(PREFIX)/share/man/man8/bwbpf.8'; \
	if [ -f '$(DESTDIR)$(INSTALL_VENV)/pyvenv.cfg' ]; then rm -rf '$(DESTDIR)$(INSTALL_VENV)'; fi; \
	if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	echo "uninstall: done; kept /etc/bwbpf and /var/lib/bwbpf. The HTB tree and classifier"; \
	echo "uninstall: stay on the interface: run 'bwbpf down' before uninstalling to remove them"

# make deb: the Debian package (debian/, built by dh with pybuild from a staged copy of this
# checkout; lintian must find no error), in $(DEB_DIR). VERSION_SUFFIX=+x builds a later
# version of the same code (make vm-test's upgrade); DEB_BPF_DEFINES and LINTIAN=no are for
# test packages: see scripts/build-deb.sh.
DEB_DIR         ?= build
VERSION_SUFFIX  ?=
DEB_BPF_DEFINES ?=
LINTIAN         ?= yes
.PHONY: deb

deb: ## the Debian package build/bwbpf_<version>_all.deb: dpkg-buildpackage, then lintian
	@DEB_DIR='$(DEB_DIR)' VERSION_SUFFIX='$(VERSION_SUFFIX)' DEB_BPF_DEFINES='$(DEB_BPF_DEFINES)' \
	  LINTIAN='$(LINTIAN)' bash scripts/build-deb.sh

# make vm-test: vm/run.sh builds a Debian 12 image once (mmdebstrap, cached under
# /var/cache/bwbpf-vm/<hash of its package lists>), boots Debian's own kernel in qemu (KVM if
# a probe boot works, else TCG), shares this checkout read-only over 9p and returns the
# guest's result. BWBPF_VM_ACCEL, BWBPF_VM_TIMEOUT and others: see vm/run.sh.
.PHONY: vm-test

vm-test: ## bpf + integration tiers and systemd checks on a stock Debian 12 kernel in qemu (root)
	@bash vm/run.sh
