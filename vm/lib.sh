# Shared by vm/build-image.sh and vm/run.sh (sourced, not run): where the image lives, what
# goes into it, and the key it is cached under.

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$VM_DIR/.." && pwd)
VM_CACHE=${BWBPF_VM_CACHE:-/var/cache/bwbpf-vm}
VM_SUITE=bookworm

say() { echo "vm-test: $*"; }
die() { echo "vm-test: $*" >&2; exit 1; }

# Install the host tools that are missing, announcing it: ensure_host_tools command:package...
ensure_host_tools() {
    local missing="" spec
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing="$missing ${spec#*:}"
    done
    [ -z "$missing" ] && return 0
    say "installing Debian packages on this host:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends $missing >/dev/null
    }
}

# A pip that works on this host, with its registry configuration: the repository's venv
# (made by `make test`), else the host's Python.
host_pip_python() {
    local py
    for py in "$REPO/.venv/bin/python" python3 /usr/bin/python3; do
        if "$py" -m pip --version >/dev/null 2>&1; then echo "$py"; return; fi
    done
    die "no pip on this host to download the guest's wheels (apt-get install python3-pip)"
}

# Python with tomllib (3.11+) to read pyproject.toml; Debian 12's own first.
host_python() {
    for py in /usr/bin/python3 python3; do
        if "$py" -c 'import tomllib' 2>/dev/null; then echo "$py"; return; fi
    done
    die "no python3 >= 3.11 on this host to read pyproject.toml"
}

# The image's Debian packages: vm/packages.txt plus scripts/setup-host.sh's PACKAGES, so
# that `make setup` in the guest finds everything installed (the guest has no network).
image_packages() {
    {
        sed -e 's/#.*//' "$VM_DIR/packages.txt"
        sed -n 's/^PACKAGES="\(.*\)"/\1/p' "$REPO/scripts/setup-host.sh" | tr ' ' '\n'
    } | awk 'NF {print $1}' | sort -u
}

# The Python packages of the guest's venv: bwbpf's dependencies and test extras from
# pyproject.toml, and what an offline `pip install -e .` needs to build (setuptools, wheel).
pip_requirements() {
    "$(host_python)" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(project.get("dependencies", []))
for extra in project.get("optional-dependencies", {}).values():
    reqs += extra
reqs += ["setuptools>=61", "wheel"]
print("\n".join(sorted(set(reqs))))
EOF
}

# Paths inside the image tree, resolved as the image sees them (vm/imagefs.py): never
# through the host's filesystem, where the image's absolute symlinks point elsewhere.
imagefs() { "$(host_python)" "$VM_DIR/imagefs.py" "$@"; }

# The image's apt sources, one-line format: the Debian archive's $VM_SUITE, -updates and
# -security suites (main), as a real Debian 12 host runs them, taken from this host's apt
# configuration: the image's kernel and its headers come from the same resolution, whichever
# suite carries the newest. BWBPF_VM_SOURCES names a file of such lines instead.
image_sources() {
    if [ -n "${BWBPF_VM_SOURCES:-}" ]; then
        sed -e 's/#.*//' "$BWBPF_VM_SOURCES" | awk 'NF'
        return
    fi
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' \
        'Identifier: Packages' 'Origin: Debian' 'Component: main' 2>/dev/null |
        awk -v s="$VM_SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security" {
            print "deb " $1 " " $2 " main" }' | sort -u
}

# The cache key: the sources, the kernel version they offer today (so that an archive update
# builds a new image instead of reusing one whose kernel the archive no longer has), both
# package lists and the build scripts. The guest runner is not in it: it is read from the
# shared repository at every boot.
image_key() {
    {
        echo "suite $VM_SUITE"
        image_sources
        apt-cache policy linux-image-amd64 linux-headers-amd64 2>/dev/null |
            awk '/^[^ ]/ {p = $1} /Candidate:/ {print p, $2}'
        image_packages
        pip_requirements
        cat "$VM_DIR/build-image.sh" "$VM_DIR/lib.sh" "$VM_DIR/imagefs.py"
    } | sha256sum | cut -c1-16
}

image_dir() { echo "$VM_CACHE/$(image_key)"; }
