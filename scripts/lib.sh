# Shared by the project's scripts: install what is missing, start and stop throwaway clusters.
# Sourced, not run. Everything here is idempotent and quick when already done.

PG_MAJOR=15
PGBIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PGBIN/pg_config
PGRX_VERSION=0.18.1
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages, cargo-pgrx pinned to the pgrx version, and pgrx's registry of pg_config.
ensure_deps() {
    local missing=() p
    for p in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang pgbouncer sudo sqlsmith python3-prometheus-client python3-yaml \
             postgresql-$PG_MAJOR-pgtap libtap-parser-sourcehandler-pgtap-perl; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    # The examples' runtimes (examples/run.sh): Python's venv and Node with npm, unless present
    # already in another packaging.
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        log "installing cargo-pgrx $PGRX_VERSION (takes a few minutes once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    local pgrx_home=${PGRX_HOME:-$HOME/.pgrx}
    if ! grep -q "^pg$PG_MAJOR *=" "$pgrx_home/config.toml" 2>/dev/null; then
        log "registering PostgreSQL $PG_MAJOR with cargo-pgrx"
        cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# cluster_start DIR PORT [extra postgresql.conf lines]: a throwaway cluster run by the
# unprivileged `postgres` user (initdb refuses root), socket in DIR, trust auth on loopback only.
cluster_start() {
    local dir=$1 port=$2 extra=${3:-}
    cluster_stop "$dir" 2>/dev/null || true
    as_root rm -rf "$dir"
    as_root mkdir -p "$dir"
    as_root chown postgres:postgres "$dir"
    as_root runuser -u postgres -- "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
        --no-instructions >/dev/null
    as_root runuser -u postgres -- bash -c "cat >> '$dir/data/postgresql.conf'" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 120
fsync = off                      # throwaway cluster: durability is not under test here
synchronous_commit = off
full_page_writes = off
log_line_prefix = '%m [%p] %q%u@%d '
max_worker_processes = 16
max_parallel_workers = 8
$extra
CONF
    # The server's environment is the caller's less RUST_BACKTRACE and RUST_LIB_BACKTRACE, plus
    # CLUSTER_ENV (for example "RUST_BACKTRACE=1": pg_tenancy must keep backtraces out of the
    # errors clients see whatever the server's environment asks for).
    # shellcheck disable=SC2086
    as_root env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE ${CLUSTER_ENV:-} runuser -u postgres -- \
        "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

cluster_stop() {
    local dir=$1
    [ -d "$dir/data" ] || return 0
    as_root runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# Build and install the extension into PostgreSQL's directories.
# Builds the extension into a package directory, then moves each file into
# PostgreSQL's directories with rename(2).  `cargo pgrx install` rewrites the
# shared library in place, which crashes any running server that has it mapped
# (a preloaded cluster does); a rename leaves the old inode to the servers that
# hold it and gives the new file to the next process that loads it.
install_extension() {
    # `--release` builds a release (cargo pgrx package's default), anything else a debug build.
    local profile=--debug
    [ "${1:-}" = "--release" ] && profile=
    local out="$REPO_ROOT/target/pgrx-package"
    rm -rf "$out"
    (cd "$REPO_ROOT" && cargo pgrx package --pg-config "$PG_CONFIG" $profile --out-dir "$out" >/dev/null)
    local f dest
    while IFS= read -r -d '' f; do
        dest="${f#"$out"}"
        mkdir -p "$(dirname "$dest")"
        cp "$f" "$dest.tenancy-new"
        chmod 0755 "$dest.tenancy-new"
        [[ "$dest" == *.so ]] || chmod 0644 "$dest.tenancy-new"
        mv -f "$dest.tenancy-new" "$dest"
    done < <(find "$out" -type f -print0)
}

# detach_installed_library: give the installed pg_tenancy.so a new inode (a copy, renamed over
# it) so that a writer that rewrites the path in place, as `cargo pgrx test`'s installer does
# (std::fs::copy truncates the file it finds), writes a file no running server has mapped:
# servers that loaded the library keep the old inode. A server that first loads the library
# after this call and before that write still meets the rewrite; run it just before.
detach_installed_library() {
    local so
    so="$("$PG_CONFIG" --pkglibdir)/pg_tenancy.so"
    [ -f "$so" ] || return 0
    cp -p "$so" "$so.tenancy-new"
    mv -f "$so.tenancy-new" "$so"
}

# Where Citus is installed (Citus's own packages: it is in no registry CI reaches): its library
# and control file. Prints nothing; the callers say what they skip.
citus_installed() {
    [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] && [ -f "$("$PG_CONFIG" --sharedir)/extension/citus.control" ]
}

# citus_cluster_start DIR DB: a local Citus cluster of three throwaway nodes under DIR
# (coordinator, worker1, worker2) on free loopback ports, preloading `citus,pg_tenancy` in that
# order (Citus refuses to start otherwise), with SET LOCAL carried to the workers
# (citus.propagate_set_commands = 'local', as pg_tenancy's binding needs). Creates DB with the
# citus extension on every node and adds the workers. Sets CITUS_PORTS (coordinator first).
# Stop it with citus_cluster_stop DIR.
citus_cluster_start() {
    local dir=$1 db=$2 n port
    CITUS_PORTS=()
    for n in coordinator worker1 worker2; do
        port=$(free_port)
        CITUS_PORTS+=("$port")
        log "starting Citus node $n on 127.0.0.1:$port"
        cluster_start "$dir/$n" "$port" "shared_preload_libraries = 'citus,pg_tenancy'
citus.propagate_set_commands = 'local'
max_prepared_transactions = 40
wal_level = logical
${CITUS_EXTRA_SETTINGS:-}"
        "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -c "CREATE DATABASE $db"
        "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" \
            -c "CREATE EXTENSION citus"
    done
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${CITUS_PORTS[0]}" -U postgres -d "$db" \
        -c "SELECT citus_set_coordinator_host('127.0.0.1', ${CITUS_PORTS[0]})" \
        -c "SELECT citus_add_node('127.0.0.1', ${CITUS_PORTS[1]})" \
        -c "SELECT citus_add_node('127.0.0.1', ${CITUS_PORTS[2]})" >/dev/null
}

citus_cluster_stop() {
    local n
    for n in coordinator worker1 worker2; do cluster_stop "$1/$n"; done
}
