#!/usr/bin/env bash
# BeforeInstall: runs before the agent copies the `files`; create the directories the app uses.
# On a simulated local fleet DEPLOYBOT_PREFIX maps every absolute path under a per-host directory.
set -euo pipefail

prefix="${DEPLOYBOT_PREFIX:-}"
mkdir -p "$prefix/opt/hello" "$prefix/var/run" "$prefix/var/log"
