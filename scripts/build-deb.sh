#!/bin/bash
# `make deb`: the Debian package bwbpf_<version>_all.deb, built by Debian's tools (debian/:
# dh with pybuild) from a copy of this checkout, and checked by lintian, which must find no
# error. The copy is staged in $DEB_DIR/src/, so the checkout stays as it is (even a
# read-only one); the .deb goes to $DEB_DIR.
#
# The version is bwbpf/__init__.py's __version__, and debian/changelog's newest entry must
# say the same. Environment:
#   DEB_DIR          where the package goes (default build)
#   VERSION_SUFFIX   appended to the version in the copy, with a changelog entry of its own
#                    (e.g. +test1: a later version than the release, for an upgrade test)
#   DEB_BPF_DEFINES  NAME[=VALUE] ... #defined at the top of the packaged bpf/egress.c, for
#                    a test package whose program differs in its bytes; releases set none
#   LINTIAN          no: skip lintian (a package built only for a test)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "deb: $*"; }
die() { echo "deb: $*" >&2; exit 1; }

deb_dir=${DEB_DIR:-build}
suffix=${VERSION_SUFFIX:-}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' bwbpf/__init__.py)
[ -n "$version" ] || die "no __version__ = \"...\" line in bwbpf/__init__.py"
command -v dpkg-parsechangelog >/dev/null || die "dpkg-parsechangelog is missing: apt-get install dpkg-dev (make host)"
logged=$(dpkg-parsechangelog -l debian/changelog -S Version)
[ "$logged" = "$version" ] ||
    die "debian/changelog's newest entry is $logged, bwbpf/__init__.py says $version: add an entry for $version"
case $suffix in
"" | [+~]*) ;;
*) die "VERSION_SUFFIX=$suffix: start it with + (a later version) or ~ (an earlier one)" ;;
esac
full=$version$suffix

mkdir -p "$deb_dir"
deb_dir=$(cd "$deb_dir" && pwd)
stage=$deb_dir/src/bwbpf-$full
say "bwbpf $full: staging the sources in $stage"
rm -rf "$stage"
mkdir -p "$stage"
# What git tracks or would track (uncommitted edits included); without git, the tree minus
# what .gitignore names.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
            if [ -e "$f" ]; then printf '%s\0' "$f"; fi # not a file deleted but not committed
        done | tar --null -T - -cf - | tar -C "$stage" -xf -
else
    tar --exclude=./.venv --exclude=./.git --exclude=./build --exclude=__pycache__ \
        --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude='*.egg-info' -cf - . |
        tar -C "$stage" -xf -
fi

if [ -n "$suffix" ]; then
    sed -i "s/^__version__ = \".*\"$/__version__ = \"$full\"/" "$stage/bwbpf/__init__.py"
    entry=$(mktemp)
    {
        printf 'bwbpf (%s) %s; urgency=medium\n\n' "$full" \
            "$(dpkg-parsechangelog -l debian/changelog -S Distribution)"
        printf '  * A build of %s with VERSION_SUFFIX=%s.\n\n' "$version" "$suffix"
        printf ' -- %s  %s\n\n' "$(dpkg-parsechangelog -l debian/changelog -S Maintainer)" \
            "$(date -R)"
        cat debian/changelog
    } >"$entry"
    mv "$entry" "$stage/debian/changelog"
fi
if [ -n "${DEB_BPF_DEFINES:-}" ]; then
    defines=$(mktemp)
    echo "/* Defined by scripts/build-deb.sh (DEB_BPF_DEFINES) for a test package. */" >"$defines"
    for d in $DEB_BPF_DEFINES; do
        case $d in
        *=*) echo "#define ${d%%=*} ${d#*=}" ;;
        *) echo "#define $d" ;;
        esac
    done >>"$defines"
    cat "$stage/bpf/egress.c" >>"$defines"
    mv "$defines" "$stage/bpf/egress.c"
    say "  bpf/egress.c with: $DEB_BPF_DEFINES"
fi
[ "$(cd "$stage" && dpkg-parsechangelog -S Version)" = "$full" ] || die "the staged changelog is not at $full"

# debian/control's Build-Depends are the build tools (scripts/setup-host.sh installs them
# with the rest, as HOST_PACKAGES).
if ! unmet=$(cd "$stage" && dpkg-checkbuilddeps 2>&1); then
    [ "$(id -u)" = 0 ] || die "${unmet#dpkg-checkbuilddeps: error: }: run make host as root"
    say "installing the build dependencies: ${unmet#*dependencies: }"
    export DEBIAN_FRONTEND=noninteractive
    apt-get build-dep -y -q "$stage" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get build-dep -y -q "$stage" >/dev/null
    }
fi

log=$deb_dir/src/bwbpf_${full}_build.log
say "dpkg-buildpackage -us -uc -b (log: $log)"
rm -f "$deb_dir/src/bwbpf_${full}_"*
started=$SECONDS
# Debian's own python3.11 and tools, as on a build daemon: not a python3 that a PATH entry
# (pyenv, a venv) puts first, which lacks Debian's modules and would go into the package.
if ! (cd "$stage" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b) >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "dpkg-buildpackage failed (the whole log: $log)"
fi
deb=$deb_dir/bwbpf_${full}_all.deb
mv -f "$deb_dir/src/bwbpf_${full}_all.deb" "$deb"
say "built $deb in $((SECONDS - started)) s"

if [ "${LINTIAN:-yes}" = no ]; then
    say "lintian skipped (LINTIAN=no)"
    exit 0
fi
command -v lintian >/dev/null || die "lintian is missing: apt-get install lintian (make host)"
# Warnings are printed; each that remains is explained in debian/bwbpf.lintian-overrides
# (which silences it) or in the README. An error fails the build.
say "lintian $(basename "$deb")"
# As root (make vm-test) lintian says it is "not recommended", meant for unpacking others'
# packages: this one was just built here.
if lintian --fail-on error "$deb" 2>&1 | grep -v "root privileges is not recommended" \
    >"$deb_dir/src/lintian.txt"; [ "${PIPESTATUS[0]}" = 0 ]; then
    sed 's/^/deb:   /' "$deb_dir/src/lintian.txt"
    say "lintian: no errors ($(grep -c '^W:' "$deb_dir/src/lintian.txt" || true) warnings)"
else
    sed 's/^/deb:   /' "$deb_dir/src/lintian.txt" >&2
    die "lintian found errors in $deb"
fi
