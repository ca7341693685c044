#!/usr/bin/env bash
# `make run`: migrate, then start web + worker (+ an embedded Redis when REDIS_URL is unset).
# `make run-proxy` (TIDINGS_PROXY=1): the same, with Debian's nginx in front on https://127.0.0.1:8443.
set -euo pipefail
cd "$(dirname "$0")/.."
# The database, the secret key and exports are yours alone.
umask 077
export PORT="${PORT:-8000}"
export EMBEDDED_REDIS_PORT="${EMBEDDED_REDIS_PORT:-6380}"
export ACCESS_LOG="${ACCESS_LOG:--}"
# honcho hands each process its own PORT; pin the web server to ours.
export BIND="${BIND:-127.0.0.1:${PORT}}"
mkdir -p instance
procfile=instance/Procfile.run
cp Procfile "$procfile"
if [ -z "${REDIS_URL:-}" ]; then
  export REDIS_URL="redis://127.0.0.1:${EMBEDDED_REDIS_PORT}/0"
  echo 'redis: .venv/bin/redis-server --port $EMBEDDED_REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --loglevel warning' >> "$procfile"
  redis_note="  (embedded)"
  cli=".venv/bin/redis-cli -p ${EMBEDDED_REDIS_PORT}"
else
  redis_note=""
  cli="redis-cli -u ${REDIS_URL}"
fi
url="http://127.0.0.1:${PORT}"
if [ "${TIDINGS_PROXY:-0}" = 1 ]; then
  PROXY_PORT="${PROXY_PORT:-8443}"
  proxy=instance/proxy
  mkdir -p "$proxy"
  if [ ! -f "$proxy/cert.pem" ]; then
    # A self-signed certificate, made once: the browser warns once, then remembers the exception.
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=127.0.0.1 \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      -keyout "$proxy/key.pem" -out "$proxy/cert.pem" 2>/dev/null
  fi
  .venv/bin/python scripts/nginx_conf.py --upstream "127.0.0.1:${PORT}" --listen "127.0.0.1:${PROXY_PORT}" \
    --cert "$PWD/$proxy/cert.pem" --key "$PWD/$proxy/key.pem" --prefix "$proxy" > "$proxy/nginx.conf"
  echo "proxy: nginx -p $proxy -c $PWD/$proxy/nginx.conf -e $PWD/$proxy/error.log" >> "$procfile"
  # The app believes exactly one proxy's X-Forwarded-* headers.
  export TRUSTED_PROXIES=1
  url="https://127.0.0.1:${PROXY_PORT}  (nginx: TLS + HTTP/2; gunicorn stays on http://127.0.0.1:${PORT})"
fi
.venv/bin/flask --app wsgi db upgrade
cat <<MSG

  Tidings is starting on ${url}  (Ctrl-C stops everything)
  Redis: ${REDIS_URL}${redis_note}
  Watch every notification:  ${cli} PSUBSCRIBE 'notifications:*'

MSG
exec .venv/bin/honcho -f "$procfile" start
