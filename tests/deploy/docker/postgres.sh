#!/bin/sh
# PostgreSQL from Debian's packages, started as the official postgres image starts it (POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB, a cluster in /var/lib/postgresql/data), for a stack that cannot pull it.
set -eu
bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/data/pgdata
mkdir -p "$data" /run/postgresql
chown -R postgres:postgres /var/lib/postgresql /run/postgresql
if [ ! -s "$data/PG_VERSION" ]; then
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
  su postgres -s /bin/sh -c "$bin/initdb -D $data -U $POSTGRES_USER --pwfile=/tmp/pw -A scram-sha-256 -E UTF8 --locale=C.UTF-8" >/dev/null
  rm /tmp/pw
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
  echo "CREATE DATABASE $POSTGRES_DB;" | su postgres -s /bin/sh -c "$bin/postgres --single -D $data -j postgres" >/dev/null
fi
exec su postgres -s /bin/sh -c "exec $bin/postgres -D $data -c listen_addresses=*"
