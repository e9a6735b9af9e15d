#!/usr/bin/env bash
# ApplicationStop: stop the running server, if any. The agent runs the PREVIOUS successful
# revision's copy of this script, so it must be forgiving: never fail when nothing runs.
set -euo pipefail

pid_file="${DEPLOYBOT_PREFIX:-}/var/run/hello.pid"

# True while pid $1 is our server. Reading /proc instead of `kill -0` ignores zombies and
# pids the system has since reused for an unrelated process.
is_hello() { grep -qs server.py "/proc/$1/cmdline"; }

[[ -f "$pid_file" ]] || exit 0
pid="$(cat "$pid_file")"
if [[ "$pid" =~ ^[0-9]+$ ]] && is_hello "$pid"; then
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do # wait up to 10 s
    is_hello "$pid" || break
    sleep 0.1
  done
  if is_hello "$pid"; then
    echo "stop.sh: hello (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  echo "stopped hello (pid $pid)"
fi
rm -f "$pid_file"
