#!/usr/bin/env bash
# ApplicationStart: start the server in the background, fully detached from the agent.
set -euo pipefail

if [[ -z "${PORT:-}" ]]; then
  echo "start.sh: PORT is not set; the agent passes the host's service port in PORT" >&2
  exit 1
fi
app_dir="${DEPLOYBOT_PREFIX:-}/opt/hello"
pid_file="${DEPLOYBOT_PREFIX:-}/var/run/hello.pid"
log_file="${DEPLOYBOT_PREFIX:-}/var/log/hello.log"
mkdir -p "$(dirname "$pid_file")" "$(dirname "$log_file")"

# ApplicationStop only runs for a previous *successful* revision, so a server left behind by a
# failed deployment would still hold the port: stop it first (a no-op when nothing runs).
"$(dirname "$0")/stop.sh"

cd "$app_dir"
# setsid: a session of its own, so the agent's cleanup of the hook's process group spares it.
# All three streams are redirected, or the agent waits on them and reports "outputs left open".
setsid "${DEPLOYBOT_PYTHON:-python3}" server.py >>"$log_file" 2>&1 </dev/null &
echo $! >"$pid_file"
echo "started hello on 127.0.0.1:$PORT (pid $!)"
