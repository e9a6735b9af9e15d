#!/usr/bin/env bash
# ValidateService: succeed once /health answers 200, fail with a clear message otherwise.
set -euo pipefail

if [[ -z "${PORT:-}" ]]; then
  echo "validate.sh: PORT is not set; the agent passes the host's service port in PORT" >&2
  exit 1
fi
url="http://127.0.0.1:$PORT/health"
attempts="${HELLO_VALIDATE_ATTEMPTS:-20}"
log_file="${DEPLOYBOT_PREFIX:-}/var/log/hello.log"

# Python rather than curl: curl may be missing on a minimal host, Python runs the app anyway.
if ! "${DEPLOYBOT_PYTHON:-python3}" - "$url" "$attempts" <<'PY'; then
import sys, time, urllib.error, urllib.request

url, attempts = sys.argv[1], int(sys.argv[2])
last = "no answer"
for _ in range(attempts):
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                print(f"{url} answered 200")
                sys.exit(0)
            last = f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        last = f"HTTP {error.code}"
    except OSError as error:
        last = str(getattr(error, "reason", error))
    time.sleep(0.25)
print(f"validate.sh: {url} did not answer 200 after {attempts} tries (last: {last})", file=sys.stderr)
sys.exit(1)
PY
  # The server's own output usually says why (a traceback, "Address already in use", ...).
  [[ -s "$log_file" ]] && tail -n 5 "$log_file" >&2
  exit 1
fi
