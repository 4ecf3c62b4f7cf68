#!/usr/bin/env bash
# A throw-away PostgreSQL for the tests, on loopback only, idempotent:
#
#   bash scripts/postgres.sh start   # creates the cluster if needed, starts it
#   bash scripts/postgres.sh url     # prints its URL (what PERSIST_TEST_POSTGRES holds)
#   bash scripts/postgres.sh stop
#
# The cluster lives in $PERSIST_PG_DIR (default /tmp/persist-pg-<uid>),
# listens on 127.0.0.1:$PERSIST_PG_PORT (default 54329) and on a socket in
# that folder, trusts local connections (a test database, nothing else)
# and keeps fsync on. As root, it runs as the `postgres` user (initdb
# refuses root). Debian's `postgresql` package provides the binaries.
set -euo pipefail

dir="${PERSIST_PG_DIR:-/tmp/persist-pg-$(id -u)}"
port="${PERSIST_PG_PORT:-54329}"
bin=""
for candidate in /usr/lib/postgresql/*/bin; do
  [ -x "$candidate/pg_ctl" ] && bin="$candidate"
done
if [ -z "$bin" ]; then
  echo "postgres: no PostgreSQL binaries (apt-get install postgresql)" >&2
  exit 1
fi

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "${1:-}" in
  start)
    if [ ! -f "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
      as_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust --no-instructions >/dev/null
    fi
    if ! as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
      as_owner "$bin/pg_ctl" -D "$dir" -w -l "$dir/server.log" \
        -o "-k $dir -p $port -c listen_addresses=127.0.0.1" start >/dev/null
    fi
    echo "postgres: running on 127.0.0.1:$port ($dir)"
    ;;
  url)
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    if [ -f "$dir/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
      as_owner "$bin/pg_ctl" -D "$dir" -w -m fast stop >/dev/null
    fi
    ;;
  *)
    echo "usage: $0 start|url|stop" >&2
    exit 2
    ;;
esac
