#!/usr/bin/env python3
"""Generates routing/read_only_functions.cpp from a PostgreSQL 15 server's pg_catalog.

Usage (from the repository root, against any PostgreSQL 15 server with no extensions beyond
plpgsql in the database connected to; connection taken from the usual PG* variables):

    PGHOST=127.0.0.1 PGPORT=15500 PGUSER=bench PGPASSWORD=benchpw PGDATABASE=postgres \
        scripts/gen_read_only_functions.py [--out routing/read_only_functions.cpp]

A function name is read-only when every pg_catalog overload of it (functions, aggregates and
window functions; members of extensions left out) is IMMUTABLE or STABLE, minus EXCLUDED, plus
the VOLATILE_SAFE names. An operator symbol is read-only when every pg_catalog operator spelled
so runs an IMMUTABLE or STABLE function. The script stops when a curated name no longer matches
the catalog (a name gone, or a volatile-safe one that is not volatile), so the lists are
reviewed when PostgreSQL changes. The output is clang-formatted when clang-format is on PATH.
"""

import argparse
import shutil
import subprocess
import sys

# Stable or immutable, but they assign a transaction id, or refuse to run during recovery, so
# a hot standby cannot run them; or they write (listed for safety, all volatile in PG 15).
EXCLUDED = {
    "txid_current",  # stable, assigns an xid: "cannot assign TransactionIds during recovery"
    "pg_current_xact_id",  # same
    "pg_walfile_name",  # immutable, but "recovery is in progress"
    "pg_walfile_name_offset",  # same
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "set_config",
    "currval",
    "lastval",
    "nextval",
    "setval",
    "pg_notify",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_export_snapshot",
    "pg_logical_emit_message",
    "query_to_xml",  # run the query text they are given, which may write
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "ts_stat",
    "setseed",  # changes the session's random() state on a shared server connection
}
EXCLUDED_SUBSTRINGS = ("advisory",)

# Volatile, but only read (or just wait): a hot standby runs them, and running them on one is
# what a client would expect. Each must still be volatile in the catalog (checked below).
VOLATILE_SAFE = {
    "random",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_is_in_recovery",
    "pg_is_wal_replay_paused",
    "pg_get_wal_replay_pause_state",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_database_size",
    "pg_tablespace_size",
    "pg_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_total_relation_size",
    "pg_partition_tree",
    "pg_partition_ancestors",
    "lo_get",  # reads a large object (opened INV_READ)
}

FUNCTIONS_SQL = """
select p.proname, bool_and(p.provolatile in ('i', 's')), bool_or(p.provolatile = 'v')
from pg_proc p
where p.pronamespace = 'pg_catalog'::regnamespace
  and p.prokind in ('f', 'a', 'w')
  and not exists (select 1 from pg_depend d
                  where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
group by p.proname
"""

OPERATORS_SQL = """
select o.oprname, bool_and(p.provolatile in ('i', 's'))
from pg_operator o join pg_proc p on p.oid = o.oprcode::oid
where o.oprnamespace = 'pg_catalog'::regnamespace
group by o.oprname
"""


def psql(sql):
    out = subprocess.run(
        ["psql", "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def cpp_array(name, values):
    items = "".join(f'    "{v}",\n' for v in values)
    return f"constexpr std::array<std::string_view, {len(values)}> {name} = {{\n{items}}};\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="routing/read_only_functions.cpp")
    args = parser.parse_args()

    version = psql("show server_version")[0][0].split()[0]
    if not version.startswith("15."):
        sys.exit(f"need a PostgreSQL 15 server, got {version}")

    functions = set()
    volatile = set()
    names = set()
    for name, all_stable, any_volatile in psql(FUNCTIONS_SQL):
        names.add(name)
        if any_volatile == "t":
            volatile.add(name)
        if all_stable == "t":
            functions.add(name)
    problems = [n for n in sorted(VOLATILE_SAFE) if n not in volatile]
    problems += [n for n in sorted(EXCLUDED) if n not in names]
    if problems:
        sys.exit("curated names that no longer match the catalog: " + ", ".join(problems))
    functions |= VOLATILE_SAFE
    functions = {
        n for n in functions
        if n not in EXCLUDED and not any(s in n for s in EXCLUDED_SUBSTRINGS)
    }
    for n in functions:
        if '"' in n or "\\" in n:
            sys.exit(f"unexpected function name {n!r}")

    operators = {name for name, all_stable in psql(OPERATORS_SQL) if all_stable == "t"}

    text = f"""\
// GENERATED by scripts/gen_read_only_functions.py from PostgreSQL {version}'s pg_catalog; edit
// the script, not this file. To regenerate (needs a PostgreSQL 15 server; PG* variables):
//   scripts/gen_read_only_functions.py --out routing/read_only_functions.cpp
// Functions: names whose every pg_catalog overload is IMMUTABLE or STABLE, less names that
// assign an xid, fail during recovery, or contain "advisory"; plus a reviewed list of VOLATILE
// names that only read (random, clock_timestamp, pg_sleep, pg_last_wal_replay_lsn, ...).
// Operators: symbols whose every pg_catalog operator runs an IMMUTABLE or STABLE function.
#include "routing/read_only_functions.h"

#include <algorithm>
#include <array>

namespace pgvalve::routing {{

namespace {{

// clang-format off
{cpp_array("kFunctions", sorted(functions))}
{cpp_array("kOperators", sorted(operators))}// clang-format on

// Binary search needs the order std::string_view compares in.
static_assert(std::is_sorted(kFunctions.begin(), kFunctions.end()));
static_assert(std::is_sorted(kOperators.begin(), kOperators.end()));

}}  // namespace

bool is_read_only_builtin(std::string_view name) {{
  return std::binary_search(kFunctions.begin(), kFunctions.end(), name);
}}

bool is_read_only_builtin_operator(std::string_view symbol) {{
  return std::binary_search(kOperators.begin(), kOperators.end(), symbol);
}}

std::size_t read_only_builtin_count() {{ return kFunctions.size(); }}

}}  // namespace pgvalve::routing
"""
    with open(args.out, "w") as f:
        f.write(text)
    if shutil.which("clang-format"):
        subprocess.run(["clang-format", "-i", args.out], check=True)
    print(f"{args.out}: {len(functions)} functions, {len(operators)} operators "
          f"(PostgreSQL {version})", file=sys.stderr)


if __name__ == "__main__":
    main()
