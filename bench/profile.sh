#!/usr/bin/env bash
# Profiles a benchmark row as it runs: waits for the mirror whose command line
# matches PATTERN, records every CPU (the eBPF programs run in the forwarding
# softirq, so a per-process profile would miss them) for SECONDS, and renders a
# flame graph with inferno (`cargo install inferno`). Run it beside
# `cargo xtask bench AREA`, as root; docs/benchmarks.md, "Profiling", has an example.
#
#   bench/profile.sh PATTERN OUT [SECONDS]   ->  OUT.data, OUT.svg, OUT.txt
set -euo pipefail
pattern=${1:?usage: bench/profile.sh PATTERN OUT [SECONDS]}
out=${2:?usage: bench/profile.sh PATTERN OUT [SECONDS]}
seconds=${3:-6}
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "profile.sh: inferno is not installed (cargo install inferno)" >&2; exit 1; }
for _ in $(seq 1 6000); do
    # Only a connmirror process: this script's own command line (and its
    # subshells') holds the pattern too.
    pid=$(for p in $(pgrep -f -- "$pattern" || true); do
        if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = connmirror ]; then echo "$p"; fi
    done | head -1)
    [ -n "$pid" ] && break
    sleep 0.1
done
[ -n "${pid:-}" ] || { echo "profile.sh: no process matched '$pattern' within 10 minutes" >&2; exit 1; }
echo "profile.sh: pid $pid matched; recording every CPU for ${seconds}s after a 2 s warm-up" >&2
sleep 2
perf record -a -g -F 499 -o "$out.data" -- sleep "$seconds" 2>/dev/null
perf script -i "$out.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph > "$out.svg"
perf report -i "$out.data" --no-children --sort comm,sym -g none --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -40 > "$out.txt"
echo "profile.sh: wrote $out.svg and $out.txt" >&2
