#!/bin/bash
# Runs once, when the primary's data directory is created: the application's role and
# database, and the role the replica streams with.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U postgres <<'SQL'
CREATE ROLE app LOGIN PASSWORD 'app-secret';
CREATE DATABASE telemetry OWNER app;
CREATE ROLE replicator LOGIN REPLICATION PASSWORD 'replicator-secret';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
