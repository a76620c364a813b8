#!/usr/bin/env bash
# timed.sh TIMES_FILE STAGE CMD...: run CMD and append {"stage", "seconds", "load"} to TIMES_FILE (for results.md).
set -euo pipefail
times=$1 stage=$2
shift 2
start=$(date +%s.%N)
"$@"
end=$(date +%s.%N)
load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null)
mkdir -p "$(dirname "$times")"
printf '{"stage": "%s", "seconds": %.1f, "load": %s}\n' "$stage" "$(awk "BEGIN{print $end - $start}")" "$load" >> "$times"
