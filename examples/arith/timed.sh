#!/usr/bin/env bash
# timed.sh TIMES_FILE STAGE CMD...: run CMD and append {"stage", "seconds", "cpu", "load"} to TIMES_FILE (the
# reports' cost columns): seconds is wall time, cpu the user + system seconds of CMD and its children.
set -euo pipefail
times=$1 stage=$2
shift 2
start=$(date +%s.%N)
"$@"
end=$(date +%s.%N)
# `times` prints the shell's, then its children's, user and system time (e.g. "1m2.500s 0m0.250s")
record=$(mktemp)
times > "$record"  # not in $(...): a subshell would report its own (zero) children
cpu=$(sed -n 2p "$record" | awk '{t = 0; for (i = 1; i <= 2; i++) {split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2]}; printf "%.1f", t}')
rm -f "$record"
load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null)
mkdir -p "$(dirname "$times")"
printf '{"stage": "%s", "seconds": %.1f, "cpu": %s, "load": %s}\n' "$stage" "$(awk "BEGIN{print $end - $start}")" \
  "$cpu" "$load" >> "$times"
