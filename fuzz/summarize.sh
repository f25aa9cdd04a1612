#!/bin/bash
# Prints the RUNS.md table row of each target from logs/<target>.log (written by
# `./fuzz.sh run`) and corpus/<target> (after `./fuzz.sh merge`).
cd "$(dirname "$0")"
echo "| target | CPU s | wall s | executions | exec/s (wall) | new units | peak RSS MB | corpus files | corpus bytes | crashes | hangs/OOMs |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for t in "$@"; do
  log="logs/$t.log"
  [ -f "$log" ] || continue
  line=$(grep '^target=' "$log" | tail -1)
  cpu=$(sed -n 's/.*cpu_s=\([0-9]*\).*/\1/p' <<< "$line")
  wall=$(sed -n 's/.*wall_s=\([0-9]*\).*/\1/p' <<< "$line")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  new=$(sed -n 's/^stat::new_units_added: *//p' "$log")
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
  files=$(find "corpus/$t" -type f | wc -l)
  bytes=$(find "corpus/$t" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  crashes=$(find "artifacts/$t" -type f -name 'crash-*' 2> /dev/null | wc -l)
  other=$(find "artifacts/$t" -type f \( -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) 2> /dev/null | wc -l)
  echo "| \`$t\` | $cpu | $wall | $execs | $eps | $new | $rss | $files | $bytes | $crashes | $other |"
done
