#!/usr/bin/env bash
# ApplicationStop: stop the running server, if any. The agent runs the PREVIOUS successful
# revision's copy of this script, so it must be forgiving: never fail when nothing runs.
set -euo pipefail

pid_file="${DEPLOYBOT_PREFIX:-}/var/run/hello.pid"

# True while pid $1 is our server. Reading /proc instead of `kill -0` ignores zombies and
# pids the system has since reused for an unrelated process.
is_hello() { grep -qs server.py "/proc/$1/cmdline"; }

# The start time of process $1 (field 22 of /proc/PID/stat), nothing once it is gone or a zombie.
# It names one process: a pid the system hands out again gets another start time. Waiting on the
# command line alone is not enough: an exiting process loses it before it has finished exiting.
start_of() {
  local stat
  local -a fields
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  read -r -a fields <<<"${stat##*) }" # from the state on: the name in parentheses may hold spaces
  [[ "${fields[0]}" == Z ]] || echo "${fields[19]}"
}

# Wait up to $2 tenths of a second for the process $1 that started at $3 to be gone.
gone_within() {
  for _ in $(seq "$2"); do
    [[ "$(start_of "$1")" == "$3" ]] || return 0
    sleep 0.1
  done
  [[ "$(start_of "$1")" != "$3" ]]
}

[[ -f "$pid_file" ]] || exit 0
pid="$(cat "$pid_file")"
if [[ "$pid" =~ ^[0-9]+$ ]] && is_hello "$pid"; then
  started="$(start_of "$pid")"
  kill -TERM "$pid" 2>/dev/null || true
  if ! gone_within "$pid" 100 "$started"; then # 10 s
    echo "stop.sh: hello (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    gone_within "$pid" 50 "$started" || echo "stop.sh: hello (pid $pid) still exiting after SIGKILL" >&2
  fi
  echo "stopped hello (pid $pid)"
fi
rm -f "$pid_file"
