#!/usr/bin/env bash
# `make demo`: two meteorpi servers on loopback, a camera node and a central server; the
# node gets synthetic camera data and replicates it to the central server while you watch.
# On a terminal the servers keep running until you press Enter; without one (a script,
# CI) they stop at the end, and it says so.
#
# `make demo-serve [DEMO_RUN=DIR]` (this script with `serve [DIR]`) starts the two servers
# again on a finished run's data (the newest run under DEMO_DIR if no DIR is given), until
# Ctrl-C.
#
# Settings come from the environment (the Makefile passes its variables):
#   BIN              the virtualenv's bin directory        (.venv/bin)
#   DEMO_DIR         where each run gets its own directory (var/demo)
#   NODE_PORT        the camera node's port                (8101)
#   CENTRAL_PORT     the central server's port             (8102)
#   DEMO_DATA_ARGS   arguments for `meteorpi demo-data`
set -euo pipefail

BIN=${BIN:-.venv/bin}
DEMO_DIR=${DEMO_DIR:-var/demo}
NODE_PORT=${NODE_PORT:-8101}
CENTRAL_PORT=${CENTRAL_PORT:-8102}
DEMO_DATA_ARGS=${DEMO_DATA_ARGS:---cameras 3 --nights 2 --events-per-night 15 --files-per-event 3 --standalone-files 4 --file-size 256KiB}
METEORPI="$BIN/meteorpi"
mode=${1:-demo}

server_pids=()
stop_servers() {
    for pid in "${server_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${server_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    server_pids=()
}
trap stop_servers EXIT
trap 'exit 130' INT TERM

say() {  # a heading; bold on a terminal
    if [ -t 1 ]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi
}

write_config() {  # directory port
    cat > "$1/meteorpi.yaml" <<EOF
database_url: sqlite:///$1/meteorpi.db
file_store: $1/files
port: $2
workers: 2
log_level: warning
export_interval_seconds: 5
EOF
}

port_of() {  # directory: the port its configuration serves on
    sed -n 's/^port: *//p' "$1/meteorpi.yaml"
}

check_port_free() {  # port
    if "$BIN/python" -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1" 2>/dev/null; then
        echo "port $1 is in use; choose others: make demo NODE_PORT=9101 CENTRAL_PORT=9102" >&2
        exit 1
    fi
}

start_server() {  # directory port
    "$METEORPI" --config "$1/meteorpi.yaml" serve > "$1/server.log" 2>&1 &
    server_pids+=($!)
    for _ in $(seq 1 100); do
        if "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" \
                "http://127.0.0.1:$2/health" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "the server in $1 did not start; its log:" >&2
    cat "$1/server.log" >&2
    exit 1
}

print_while_running() {  # what to try against the running servers
    local password
    password=$(cat "$run_dir/demo-password")
    cat <<EOF
  curl -u demo:$password http://127.0.0.1:$CENTRAL_PORT/cameras
  curl -u demo:$password 'http://127.0.0.1:$CENTRAL_PORT/events?limit=3'
  curl -u demo:$password http://127.0.0.1:$NODE_PORT/exports
  $METEORPI --config $node_dir/meteorpi.yaml export run --once   # sends only what is new
EOF
}

if [ "$mode" = serve ]; then
    run_dir=${2:-$(ls -1dt "$DEMO_DIR"/run-* 2>/dev/null | head -n 1)}
    if [ -z "$run_dir" ] || [ ! -f "$run_dir/camera-node/meteorpi.yaml" ] \
            || [ ! -f "$run_dir/demo-password" ]; then
        echo "no finished demo run to serve${2:+ in $2}; make one with: make demo" >&2
        exit 1
    fi
    run_dir=$(cd "$run_dir" && pwd)
    node_dir="$run_dir/camera-node"
    central_dir="$run_dir/central"
    NODE_PORT=$(port_of "$node_dir")
    CENTRAL_PORT=$(port_of "$central_dir")
    check_port_free "$NODE_PORT"
    check_port_free "$CENTRAL_PORT"
    start_server "$node_dir" "$NODE_PORT"
    start_server "$central_dir" "$CENTRAL_PORT"
    say "The demo in $run_dir is served again"
    echo "camera node on http://127.0.0.1:$NODE_PORT, central server on http://127.0.0.1:$CENTRAL_PORT"
    echo "The servers run until you press Ctrl-C. Try (user demo):"
    print_while_running
    # Until a signal (Ctrl-C, TERM) or a server stopping by itself.
    wait -n || true
    echo "a server stopped by itself; see server.log in $node_dir and $central_dir" >&2
    exit 1
fi

check_port_free "$NODE_PORT"
check_port_free "$CENTRAL_PORT"
mkdir -p "$DEMO_DIR"
run_dir=$(cd "$(mktemp -d "$DEMO_DIR/run-XXXXXX")" && pwd)
node_dir="$run_dir/camera-node"
central_dir="$run_dir/central"
mkdir -p "$node_dir" "$central_dir"

say "Two servers in $run_dir"
write_config "$node_dir" "$NODE_PORT"
write_config "$central_dir" "$CENTRAL_PORT"
"$METEORPI" --config "$node_dir/meteorpi.yaml" db upgrade
"$METEORPI" --config "$central_dir/meteorpi.yaml" db upgrade
import_password=$("$BIN/python" -c "import secrets; print(secrets.token_urlsafe(18))")
viewer_password=$("$BIN/python" -c "import secrets; print(secrets.token_urlsafe(12))")
printf '%s\n' "$import_password" | "$METEORPI" --config "$central_dir/meteorpi.yaml" \
    users add camera-node --role import --password-stdin
for dir in "$node_dir" "$central_dir"; do
    printf '%s\n' "$viewer_password" | "$METEORPI" --config "$dir/meteorpi.yaml" \
        users add demo --role user --role camera_admin --password-stdin
done
start_server "$node_dir" "$NODE_PORT"
start_server "$central_dir" "$CENTRAL_PORT"
echo "camera node on http://127.0.0.1:$NODE_PORT, central server on http://127.0.0.1:$CENTRAL_PORT"

say "The camera node records synthetic data: $DEMO_DATA_ARGS"
# shellcheck disable=SC2086  # the arguments are meant to split
"$METEORPI" --config "$node_dir/meteorpi.yaml" demo-data $DEMO_DATA_ARGS

say "Export configurations on the camera node"
for kind in events files; do
    printf '%s\n' "$import_password" | "$METEORPI" --config "$node_dir/meteorpi.yaml" export add \
        "central-$kind" --target "http://127.0.0.1:$CENTRAL_PORT/import" --user camera-node \
        --password-stdin "--$kind"
done

say "Replicating to the central server"
"$METEORPI" --config "$node_dir/meteorpi.yaml" export run --once
"$METEORPI" --config "$node_dir/meteorpi.yaml" export status
# Written last: `make demo-serve` serves only runs that got this far.
(umask 077 && printf '%s\n' "$viewer_password" > "$run_dir/demo-password")

say "Where to look"
cat <<EOF
Everything of this run is in $run_dir:
  camera node     $node_dir/meteorpi.db, files under $node_dir/files
  central server  $central_dir/meteorpi.db, files under $central_dir/files
  (the files are PNG images: open any of them)

At any time, whether the servers run or not:
  $METEORPI --config $node_dir/meteorpi.yaml export status
  $METEORPI --config $node_dir/meteorpi.yaml demo-data --nights 1 --events-per-night 5
EOF

restart="make demo-serve DEMO_RUN=$run_dir"
if [ -t 0 ]; then
    echo
    echo "While the servers run (user demo, password $viewer_password):"
    print_while_running
    printf '\nThe servers keep running until you press Enter (or Ctrl-C).'
    read -r _ || true
    stop_servers
    echo "The servers have stopped. To start them again on this run's data: $restart"
else
    # No terminal to wait on: stop now, and say so before giving any command that needs them.
    stop_servers
    echo
    echo "The servers have stopped (no terminal to keep them running for)."
    echo "To start them again on this run's data, until Ctrl-C: $restart"
    echo "and while they run (user demo, password $viewer_password):"
    print_while_running
fi
