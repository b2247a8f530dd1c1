#!/usr/bin/env bash
# Compares how many tokens per second one core signs: asap-proxy (benches/mint.rs, RustCrypto)
# against the reference Python library atlassian-jwt-auth (bench/signing.py, OpenSSL through
# `cryptography`), with the same fixture keys, and prints a Markdown table.
#
# Run from a fresh clone after `bash .ci/run` has made .venv:  bash bench/signing.sh [--quick]
# --quick measures for about a second per algorithm instead of three. Both sides are pinned
# to CPU 0 with taskset when it exists. Progress goes to stderr, the table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
for arg in "$@"; do
    case "$arg" in
        --quick) quick=true ;;
        *) echo "usage: bash bench/signing.sh [--quick]" >&2; exit 2 ;;
    esac
done

python=.venv/bin/python
if [ ! -x "$python" ]; then
    echo "bench/signing.sh: $python is missing; run bash .ci/run first" >&2
    exit 1
fi

if $quick; then
    criterion_args=(--warm-up-time 0.5 --measurement-time 1 --sample-size 10)
    python_seconds=0.5
else
    criterion_args=(--warm-up-time 1 --measurement-time 3 --sample-size 30)
    python_seconds=2
fi

pin=()
if command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c 0)
else
    echo "bench/signing.sh: taskset not found, running unpinned" >&2
fi

# Criterion writes each result to <target>/criterion/mint/<ALG>/new/estimates.json; the marker
# tells this run's results from an earlier run's.
target_dir=$(cargo metadata --format-version 1 --no-deps |
    "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
marker=$(mktemp)
python_out=$(mktemp)
trap 'rm -f "$marker" "$python_out"' EXIT

# Compile on every core first, so only the measuring is pinned.
cargo bench --bench mint --no-run >&2
"${pin[@]}" cargo bench --bench mint -- --noplot "${criterion_args[@]}" >&2
"${pin[@]}" "$python" bench/signing.py --seconds "$python_seconds" | tee "$python_out" >&2

echo "| algorithm | asap-proxy tokens/s/core | atlassian-jwt-auth tokens/s/core | ratio |"
echo "|---|---:|---:|---:|"
for alg in RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512; do
    estimates="$target_dir/criterion/mint/$alg/new/estimates.json"
    if [ ! "$estimates" -nt "$marker" ]; then
        echo "bench/signing.sh: no fresh criterion result for $alg in $estimates" >&2
        exit 1
    fi
    reference=$(awk -v alg="$alg" '$1 == alg { print $2 }' "$python_out")
    # Criterion's mean time per iteration is in nanoseconds; one iteration mints one token.
    "$python" - "$alg" "$estimates" "$reference" <<'EOF'
import json, sys
alg, estimates, reference = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(estimates) as f:
    ours = 1e9 / json.load(f)["mean"]["point_estimate"]
print(f"| {alg} | {ours:,.0f} | {reference:,.0f} | {ours / reference:.2f} |")
EOF
done
echo
echo "ratio: asap-proxy tokens/s divided by atlassian-jwt-auth tokens/s; above 1 means asap-proxy signs faster."
