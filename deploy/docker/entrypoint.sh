#!/bin/sh
# Entry point of the Conveyor image. Secrets come in as files (Docker/Swarm secrets,
# Kubernetes secret volumes): for each VAR below, VAR_FILE names a file whose content
# becomes VAR, so the secret never has to sit in the container's environment config.
set -eu

for var in CONVEYOR_DATABASE_URL CONVEYOR_TOKEN CONVEYOR_ADMIN_TOKEN; do
  eval "file=\${${var}_FILE:-}"
  if [ -n "$file" ]; then
    if [ ! -r "$file" ]; then
      echo "conveyor-entrypoint: ${var}_FILE=$file is not a readable file" >&2
      exit 2
    fi
    value=$(cat "$file")
    export "$var=$value"
    unset "${var}_FILE"
  fi
done

# `sh -c '…'` or an absolute path runs as given (for commands that expand variables);
# anything else is a conveyor sub-command: `server …`, `agent …`, `healthcheck …`.
case "${1:-}" in
  sh | /*) exec "$@" ;;
esac
exec conveyor "$@"
