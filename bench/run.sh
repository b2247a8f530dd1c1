#!/usr/bin/env bash
# Benchmarks asap-proxy side by side with nginx and tinyproxy on this machine.
#
#   bash bench/run.sh            # full run (about 15 minutes), writes BENCHMARKS.md
#   bash bench/run.sh --smoke    # a few seconds per contender; checks that everything works
#
# Needs a Debian-like machine: nginx, wrk and tinyproxy are installed from the distribution's
# packages when missing (as root). Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: install ${missing[*]} (apt-get install ${missing[*]}), or run as root" >&2
        exit 1
    fi
    apt-get update -qq
    # Only the binaries are used; keep the packaged services from starting.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

if [ "${1:-}" = "--smoke" ]; then
    cargo build --locked --quiet
    exec python3 bench/run.py --binary target/debug/asap-proxy --smoke
else
    cargo build --locked --release --quiet
    exec python3 bench/run.py --binary target/release/asap-proxy --output BENCHMARKS.md "$@"
fi
