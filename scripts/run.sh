#!/usr/bin/env bash
# `make run`: migrate, then start web + worker (+ an embedded Redis when REDIS_URL is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
export PORT="${PORT:-8000}"
export EMBEDDED_REDIS_PORT="${EMBEDDED_REDIS_PORT:-6380}"
export ACCESS_LOG="${ACCESS_LOG:--}"
# honcho hands each process its own PORT; pin the web server to ours.
export BIND="${BIND:-127.0.0.1:${PORT}}"
procfile=Procfile
if [ -z "${REDIS_URL:-}" ]; then
  export REDIS_URL="redis://127.0.0.1:${EMBEDDED_REDIS_PORT}/0"
  procfile=Procfile.embedded
  cli=".venv/bin/redis-cli -p ${EMBEDDED_REDIS_PORT}"
else
  cli="redis-cli -u ${REDIS_URL}"
fi
.venv/bin/flask --app wsgi db upgrade
cat <<MSG

  Tidings is starting on http://127.0.0.1:${PORT}  (Ctrl-C stops everything)
  Redis: ${REDIS_URL}$( [ "$procfile" = Procfile.embedded ] && echo "  (embedded)" )
  Watch every notification:  ${cli} PSUBSCRIBE 'notifications:*'

MSG
exec .venv/bin/honcho -f "$procfile" start
