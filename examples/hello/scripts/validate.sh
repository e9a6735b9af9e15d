#!/usr/bin/env bash
# ValidateService: succeed once /health answers 200 from the version just installed (not from some older server
# still holding the port), fail with a clear message otherwise.
set -euo pipefail

if [[ -z "${PORT:-}" ]]; then
  echo "validate.sh: PORT is not set; the agent passes the host's service port in PORT" >&2
  exit 1
fi
url="http://127.0.0.1:$PORT/health"
attempts="${HELLO_VALIDATE_ATTEMPTS:-20}"
log_file="${DEPLOYBOT_PREFIX:-}/var/log/hello.log"
version="$(tr -d '[:space:]' < "${DEPLOYBOT_PREFIX:-}/opt/hello/VERSION" 2>/dev/null || true)"

# Python rather than curl: curl may be missing on a minimal host, Python runs the app anyway.
if ! "${DEPLOYBOT_PYTHON:-python3}" - "$url" "$attempts" "$version" <<'PY'; then
import sys, time, urllib.error, urllib.request

url, attempts, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
last = "no answer"
for _ in range(attempts):
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            body = response.read().decode(errors="replace").split()
            if response.status == 200 and (not version or body[-1:] == [version]):
                print(f"{url} answered 200 from version {version or '?'}")
                sys.exit(0)
            last = f"HTTP {response.status} from version {body[-1] if body else '?'}, expected {version}"
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
