#!/bin/sh
# Creates the secrets the Compose stack reads (deploy/compose/secrets/, never
# committed): the PostgreSQL password, the database URL holding it, and the admin
# token the first controller creates and the agents use. Run once before
# `docker compose up`; it keeps secrets that already exist.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
chmod 700 secrets
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
if [ ! -s secrets/postgres_password ]; then
  random > secrets/postgres_password
fi
if [ ! -s secrets/database_url ]; then
  printf 'postgresql://conveyor:%s@postgres:5432/conveyor' "$(cat secrets/postgres_password)" \
    > secrets/database_url
fi
if [ ! -s secrets/admin_token ]; then
  printf 'cvy_%s' "$(random)" > secrets/admin_token
fi
chmod 600 secrets/*
echo "secrets in $(pwd)/secrets: postgres_password, database_url, admin_token"
