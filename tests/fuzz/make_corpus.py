#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/corpus/<target>/ (committed; rerun after editing).

Seeds are a few small, realistic inputs that give libFuzzer a head start; tests/fuzz/run copies
them into a working corpus and never writes here. Usage: tests/fuzz/make_corpus.py
"""
import base64
import hashlib
import hmac
import pathlib
import shutil
import struct

HERE = pathlib.Path(__file__).resolve().parent


def msg(tag: bytes, body: bytes) -> bytes:
    """A tagged protocol 3.0 message: tag, int32 length counting itself, body."""
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def startup(params: dict) -> bytes:
    pairs = b"".join(cstr(k) + cstr(v) for k, v in params.items())
    body = struct.pack("!I", 196608) + pairs + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def scram_exchange() -> bytes:
    """client-first NUL client-final, valid against protocol_fuzz's server (password "pw",
    salt "salt", 1 iteration, server nonce "srv")."""
    client_first_bare = "n=,r=cnonce"
    server_first = "r=cnoncesrv,s=" + base64.b64encode(b"salt").decode() + ",i=1"
    without_proof = "c=biws,r=cnoncesrv"
    auth_message = ",".join([client_first_bare, server_first, without_proof]).encode()
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 1)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    final = without_proof + ",p=" + base64.b64encode(proof).decode()
    return ("n,," + client_first_bare).encode() + b"\0" + final.encode()


def scram_verifier() -> bytes:
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 4096)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()
    return f"SCRAM-SHA-256$4096:{b64(b'salt')}${b64(stored)}:{b64(server)}".encode()


def protocol_seeds() -> dict:
    client_first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
    return {
        "startup_message": startup({"user": "alice", "database": "app",
                                    "application_name": "psql", "client_encoding": "UTF8"}),
        "ssl_request": struct.pack("!II", 8, 80877103),
        "cancel_request": struct.pack("!IIii", 16, 80877102, 4242, -123456789),
        "simple_query": msg(b"Q", cstr("SELECT 1; SET search_path TO app")) + msg(b"X", b""),
        "extended_query": (
            msg(b"P", cstr("s1") + cstr("SELECT $1::int + $2") + struct.pack("!HII", 2, 23, 0))
            + msg(b"B", cstr("p1") + cstr("s1") + struct.pack("!HHH", 2, 0, 1)
                  + struct.pack("!H", 2) + struct.pack("!I", 2) + b"42"
                  + struct.pack("!i", -1) + struct.pack("!HH", 1, 0))
            + msg(b"D", b"P" + cstr("p1"))
            + msg(b"E", cstr("p1") + struct.pack("!I", 0))
            + msg(b"C", b"S" + cstr("s1"))
            + msg(b"S", b"")),
        "sasl_client": (
            msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!I", len(client_first)) + client_first)
            + msg(b"p", b"c=biws,r=rOprNGfwEbeRWgbNEkqOsrv,"
                        b"p=dHpbS1Ghb2bPljb0vDWNIVeJCZfXmM9Zf3pc9kMUNTo=")
            + msg(b"p", cstr("md5d41d8cd98f00b204e9800998ecf8427e"))),
        "server_login": (
            msg(b"R", struct.pack("!I", 10) + cstr("SCRAM-SHA-256") + b"\0")
            + msg(b"R", struct.pack("!I", 0))
            + msg(b"S", cstr("server_version") + cstr("15.6"))
            + msg(b"K", struct.pack("!ii", 4242, 987654321))
            + msg(b"Z", b"I")),
        "server_results": (
            msg(b"C", cstr("SELECT 1"))
            + msg(b"A", struct.pack("!i", 4242) + cstr("jobs") + cstr("payload"))
            + msg(b"E", b"S" + cstr("ERROR") + b"C" + cstr("42P01")
                  + b"M" + cstr('relation "t" does not exist') + b"\0")
            + msg(b"Z", b"T")),
        "scram_exchange": scram_exchange(),
        "scram_verifier": scram_verifier(),
    }


def lexer_seeds() -> dict:
    return {
        "select": b"SELECT id, name FROM users WHERE id = $1 AND name <> 'o''brien' LIMIT 10",
        "transaction": b"BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY; "
                       b"SAVEPOINT s1; ROLLBACK TO SAVEPOINT s1; COMMIT AND CHAIN;",
        "set": b"SET LOCAL \"TimeZone\" TO 'UTC'; SET search_path = app, public; RESET ALL",
        "hint_comments": b"/* pgvalve: route=primary */ -- line comment\n"
                         b"/* nested /* comment */ */ UPDATE t SET x = x + 1 RETURNING *",
        "dollar_quotes": b"DO $body$ BEGIN PERFORM pg_advisory_lock(1); END $body$; "
                         b"SELECT $$a;b$$, E'\\n\\'', U&\"d\\0061t\", B'101', 1.5e-3",
        "prepare": b"PREPARE q (int, text) AS INSERT INTO t VALUES ($1, $2); "
                   b"EXECUTE q(1, 'a'); DEALLOCATE PREPARE q",
        "listen_cursor": b"LISTEN jobs; NOTIFY jobs, 'hi'; DECLARE c CURSOR WITH HOLD FOR TABLE t; "
                         b"CREATE TEMP TABLE tmp (a int) ON COMMIT DROP; DISCARD ALL",
    }


# session_fuzz: tests/fuzz/session_fuzz.cpp's opcodes and canned messages (keep in step with it).
SESSION_SQL = [
    "select 1", "begin", "commit", "rollback", "SET statement_timeout = '5s'",
    "SET application_name = 'x'", "SET LOCAL work_mem = '1MB'", "RESET statement_timeout",
    "RESET ALL", "DISCARD ALL", "LISTEN jobs", "UNLISTEN *", "UNLISTEN jobs",
    "select pg_advisory_lock(1)", "select pg_advisory_unlock(1)", "create temp table t (a int)",
    "create temp table t (a int) on commit drop", "declare c cursor with hold for select 1",
    "close c", "drop table t", "PREPARE q AS select 1", "DEALLOCATE s1", "DEALLOCATE q",
    "DEALLOCATE ALL", "PREPARE TRANSACTION 'x'", "SAVEPOINT a", "ROLLBACK TO a", "RELEASE a",
    "select set_config('search_path', 'a', false)", "select set_config('search_path', 'a', true)",
    "select set_config('x.y', current_user, false)", "SET ROLE r", "RESET ROLE", "SET ROLE NONE",
    "SET SESSION AUTHORIZATION u", "SET SESSION AUTHORIZATION DEFAULT",
    "SET statement_timeout FROM CURRENT", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET statement_timeout = '1s'; SET lock_timeout = '2s'", "BEGIN; SET work_mem = '2MB'; COMMIT",
    "copy t from stdin", "select 1 into temp t2", "", "LISTEN a; select 1",
    "SET TimeZone = 'Europe/Paris'", "DO $$BEGIN SET search_path = x; END$$",
    "DO $$BEGIN CREATE TEMP TABLE t (a int); END$$", "select 1/0",
    # Sharded database statements (appended, so that the indices above stay).
    "SELECT count(*) FROM telemetry", "SELECT * FROM telemetry ORDER BY device_id LIMIT 2",
    "SELECT device_id, count(*) FROM telemetry GROUP BY device_id",
    "SELECT * FROM telemetry WHERE device_id IN (1, 2, 4)",
    "SELECT * FROM telemetry WHERE device_id = $1",
    "/* pgvalve: all_shards */ DELETE FROM telemetry",
    "INSERT INTO telemetry (device_id, v) VALUES (1, 'a'), (2, 'b')",
    "INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4), ($5, $6)",
    "UPDATE archive SET v = 'x' WHERE device_id IN (1, 2, 4)",
    "CREATE TABLE archive (device_id bigint)", "INSERT INTO device_types VALUES (1, 'x')",
    "SELECT * FROM device_types", "SET pgvalve.device_id = 2", "/* pgvalve: shard=s1 */ select 1",
    "SELECT avg(v) FROM telemetry", "SELECT count(*) FROM telemetry LIMIT $1",
    "COPY telemetry (device_id, v) FROM STDIN",
    "COPY device_types (id, name) FROM STDIN WITH (FORMAT csv)",
    "SELECT * FROM telemetry WHERE device_id = 2",
    "INSERT INTO telemetry (device_id, v) VALUES (3, 'c')",
    "UPDATE telemetry SET v = 'y' WHERE device_id = 4", "DELETE FROM telemetry WHERE device_id = 1",
]
SESSION_NAMES = ["", "s1", "s2", "p"]
SESSION_TAGS = ["SELECT 1", "SET", "COMMIT", "ROLLBACK", "BEGIN", "RESET", "DISCARD ALL", "LISTEN"]


def session_seeds() -> dict:
    def sql(text):
        return SESSION_SQL.index(text)

    def client(kind, text="select 1", name=""):
        """Opcode 1: a canned client message (kind 0 Query, 2 Parse, 3 Bind, 4 Describe,
        5 Execute, 6 Sync, 8 Flush, 9 Close, 10 Terminate, 14 a whole extended flight,
        15 Parse + Sync)."""
        return bytes([1, kind | (SESSION_NAMES.index(name) << 5), sql(text)])

    def server(kind, variant=0):
        """Opcode 5: a canned server message (0 ReadyForQuery I, 2 T, 3 E, 4 CommandComplete
        (tag by variant), 6 ParseComplete, 7 BindComplete, 9 NoData, 10 RowDescription,
        11 DataRow, 12 ErrorResponse, 13 ParameterStatus, 15 Notification, 20 10 kB DataRow
        (0x80: its start only), 21 the pin check's answer (0x80: something found), 23 a whole
        extended answer)."""
        return bytes([5, kind | variant])

    def tag(name):
        return server(4, SESSION_TAGS.index(name) << 5)

    fresh = bytes([0])  # the pool's answer to a checkout: a fresh server
    reused = bytes([8])  # a server given back earlier, when there is one
    no_server = bytes([7])  # the pool found none: on_checkout_failed
    later = bytes([6])  # the pool makes the checkout wait: answered by pool_answers()

    def pool_answers(answer=0):
        """Opcode 14 with high bits: the pool answers the checkout it made wait (0 a fresh
        server, 7 none)."""
        return bytes([0x1e, answer])

    def answer(link=0, unit=0, fault=0, v=0):
        """Opcode 6: the FakeServer of a linked server answers what it was sent, as PostgreSQL
        would. `link`: which of the linked servers (by position among them, 0 the lowest link);
        `unit`: 0 the next request up to its ReadyForQuery, else that many messages; `fault`:
        0 none, 4 an error (PREPARE TRANSACTION: 55000 when v & 0x20), 5 the answer cut at
        v/256 (the rest comes with the next answer), 6 a FATAL after that part and the server
        lost, 7 an error and a cut; `v` shapes rows and values."""
        return bytes([6, link | unit << 2 | fault << 5, v])

    def lost(link=0):
        """Opcode 7: the server of the link-th linked link is lost."""
        return bytes([7, link])

    sharded = bytes([0, 0x10])  # transaction mode, 3 shards
    everything = 7  # answer up to 7 messages: a write's BEGIN, statement and PREPARE at once
    shards3 = fresh * 3
    select_answer = server(10) + server(11) + tag("SELECT 1") + server(0)
    return {
        "transaction_simple": bytes([0, 0]) + client(0) + fresh + select_answer
                              + client(0, "begin") + fresh + tag("BEGIN") + server(2)
                              + client(0, "SET statement_timeout = '5s'") + tag("SET") + server(2)
                              + client(0, "commit") + tag("COMMIT") + server(0)
                              + client(0) + reused + select_answer,
        "transaction_extended": bytes([0, 0]) + client(15, name="s1")
                                + client(14, name="s1") + fresh
                                + server(6) + server(7) + server(11) + tag("SELECT 1") + server(0)
                                + client(14, name="s1") + reused + server(23),
        "session_mode": bytes([1, 2]) + tag("SET") + server(0)
                        + client(0, "SET statement_timeout = '1s'; SET lock_timeout = '2s'")
                        + tag("SET") + tag("SET") + server(0)
                        + client(0, "RESET ALL") + tag("RESET") + server(0)
                        + client(0) + tag("SET") + server(0) + select_answer
                        + client(0, "create temp table t (a int)") + bytes([11]),
        "listen_hub": bytes([0, 0]) + client(0, "LISTEN jobs") + bytes([10, 0])
                      + bytes([9, 3, 0]) + client(0) + fresh + bytes([9, 3, 0]) + select_answer
                      + client(14, "UNLISTEN jobs") + bytes([10, 1]),
        "pinning": bytes([0, 0]) + client(0, "select pg_advisory_lock(1)") + fresh
                   + select_answer + server(21, 0x80)
                   + client(0, "select pg_advisory_unlock(1)") + select_answer + server(21)
                   + client(0, "create temp table t (a int)") + fresh + tag("SET") + server(0)
                   + server(21, 0x80) + bytes([12]),
        "failures": bytes([8, 8]) + tag("SET") + server(0)
                    + client(0, "begin") + fresh + tag("BEGIN") + server(2)
                    + bytes([8, 200]) + bytes([7]) + client(0) + client(0) + fresh
                    + bytes([8, 255]) + client(0, "SET statement_timeout = '5s'") + reused
                    + server(12) + server(0) + bytes([12]),
        "large_row": bytes([0, 1]) + client(0) + fresh + server(10) + server(20, 0x80 | 5)
                     + bytes([4, 200]) + b"x" * 200 + bytes([7]),
        # COPY as libpq runs it through the extended protocol (a Sync the server ignores, data,
        # CopyDone and Sync), then a simple COPY with a query sent behind it (refused).
        "copy_extended": bytes([0, 0]) + client(14 | 0x10, "copy t from stdin") + fresh
                         + answer(unit=4) + client(11) + client(12) + client(6)
                         + answer() * 3
                         + client(0, "copy t from stdin") + client(0) + reused + answer(unit=1),
        "hostile": bytes([16, 0]) + bytes([0, 3]) + b"Q\0\0" + bytes([8, 20])
                   + bytes([0, 5]) + b"Q\0\0\0\1",
        # Sharded: a read over every shard, simple then extended (P/B/D/E/S), then ordered.
        "scatter_read": sharded + client(0, "SELECT count(*) FROM telemetry") + shards3
                        + answer(v=3) + answer(v=4) + answer(v=5)
                        + client(14 | 0x10, "SELECT count(*) FROM telemetry") + reused * 3
                        + answer(unit=everything) * 3
                        + client(0, "SELECT * FROM telemetry ORDER BY device_id LIMIT 2")
                        + shards3 + answer(v=0x10) + answer(v=0x19) + answer(v=0x0a)
                        + client(0, "SELECT * FROM telemetry WHERE device_id = $1")
                        + fresh + answer(),
        # A write over every shard: BEGIN; DELETE; PREPARE TRANSACTION on each, then COMMIT
        # PREPARED one shard after the other.
        "scatter_write": sharded
                         + client(0, "/* pgvalve: all_shards */ DELETE FROM telemetry") + shards3
                         + answer(0, everything) + answer(1, everything)
                         + answer(2, everything) + answer() + answer() + answer(),
        # A request whose statements name two shards up to one Sync (a driver's batch): the
        # first shard's part, then the second shard joins and runs the rest, and the Sync commits
        # both parts with two-phase commit.
        "batch_over_shards": sharded
                             + client(2, "SELECT * FROM telemetry WHERE device_id = 2")
                             + client(3, "SELECT * FROM telemetry WHERE device_id = 2")
                             + client(5)
                             + client(2, "DELETE FROM telemetry WHERE device_id = 1")
                             + client(3, "DELETE FROM telemetry WHERE device_id = 1")
                             + client(5) + client(6) + fresh + answer() + fresh
                             + answer(1) + answer(1) + answer(0) + answer(0) + answer(1)
                             + answer(0) + answer(1),
        # A portal over every shard fetched one row at a time inside a transaction whose BEGIN
        # pgvalve holds back (PgJDBC's fetch size): suspended between the Executes, then ended
        # by another statement.
        "portal_over_shards": sharded + client(0, "begin")
                              + client(2, "SELECT * FROM telemetry WHERE device_id IN (1, 2, 4)")
                              + client(3 | 0x80, "SELECT * FROM telemetry WHERE device_id IN (1, 2, 4)")
                              + client(5 | 0x80 | 0x10) + client(6) + shards3
                              + answer(0, v=0x18) + answer(1, v=0x10) + answer(2, v=0x19)
                              + client(5 | 0x80 | 0x10) + client(6)
                              + client(5 | 0x80 | 0x10) + client(6)
                              + client(0, "SELECT count(*) FROM telemetry") + shards3
                              + answer(0) + answer(1) + answer(2) + client(0, "commit"),
        # An INSERT whose rows are split between shards, simple then extended with Bind values
        # (1, 'a', 2, 'b', 4, 'c').
        # (md5_mod over 3 shards: keys 2 and 1 are shards 0 and 1, the Bind's 1, 2, 4 all three.)
        "scatter_insert": sharded
                          + client(0, "INSERT INTO telemetry (device_id, v) VALUES (1, 'a'), (2, 'b')")
                          + fresh * 2 + answer(0, everything) + answer(1, everything)
                          + answer() + answer()
                          + client(14, "INSERT INTO telemetry (device_id, v) VALUES "
                                       "($1, $2), ($3, $4), ($5, $6)")
                          + reused * 3 + answer(0, everything) + answer(1, everything)
                          + answer(2, everything) + answer() + answer() + answer(),
        # DDL and a reference table's write reach every shard (extended DDL: BEGIN, P/B/D/E/S,
        # PREPARE).
        "scatter_ddl": sharded + client(0, "CREATE TABLE archive (device_id bigint)") + shards3
                       + answer(0, everything) + answer(1, everything) + answer(2, everything)
                       + answer() + answer() + answer()
                       + client(14 | 0x10, "CREATE TABLE archive (device_id bigint)") + shards3
                       + answer(0, everything) + answer(1, everything) + answer(2, everything)
                       + answer() + answer() + answer()
                       + client(0, "INSERT INTO device_types VALUES (1, 'x')") + shards3
                       + answer(0, everything) + answer(1, everything) + answer(2, everything)
                       + answer() + answer() + answer(),
        # Failures: no server for the second shard of a read; a shard lost after preparing; a
        # shard without prepared transactions (55000); a shard lost while committing; a server
        # dying mid-answer.
        "scatter_failures": sharded
                            + client(0, "SELECT count(*) FROM telemetry") + fresh + no_server
                            + answer()
                            + client(0, "/* pgvalve: all_shards */ DELETE FROM telemetry")
                            + shards3 + answer(0, everything) + answer(1, everything)
                            + lost(1) + answer(1, everything) + answer() + answer()
                            + client(0, "UPDATE archive SET v = 'x' WHERE device_id IN (1, 2, 4)")
                            + shards3 + answer(0, everything) + answer(1, 2)
                            + answer(1, fault=4, v=0x20) + answer(2, everything)
                            + answer() + answer()
                            + client(0, "/* pgvalve: all_shards */ DELETE FROM telemetry")
                            + shards3 + answer(0, everything) + answer(1, everything)
                            + answer(2, everything) + lost(0) + answer() + answer()
                            + client(0, "SELECT count(*) FROM telemetry") + shards3
                            + answer(1, fault=6, v=0xa0) + answer() + answer(),
        # A transaction over three shards (keys 3, 4 and 2 are shards 1, 2 and 0): the first
        # statement's shard runs the BEGIN, each other shard joins (BEGIN and its
        # max_prepared_transactions), COMMIT prepares every part, then commits them one after the
        # other, shard 0 first (link 2: positions count linked servers). Then one that fails on a
        # part (1/0) and whose COMMIT rolls every part back.
        "shard_transaction": sharded + client(0, "begin")
                             + client(0, "INSERT INTO telemetry (device_id, v) VALUES (3, 'c')")
                             + fresh + answer() + answer()
                             + client(0, "UPDATE telemetry SET v = 'y' WHERE device_id = 4")
                             + fresh + answer(1, everything) + answer(1)
                             + client(0, "SELECT * FROM telemetry WHERE device_id = 2")
                             + fresh + answer(2, everything) + answer(2)
                             + client(0, "commit") + answer(0) + answer(1) + answer(2)
                             + answer(2) + answer() + answer()
                             + client(0, "begin")
                             + client(0, "DELETE FROM telemetry WHERE device_id = 1")
                             + reused + answer() + answer()
                             + client(0, "SELECT * FROM telemetry WHERE device_id = 2")
                             + reused + answer(1, everything) + answer(1)
                             + client(0, "select 1/0") + answer(1)
                             + client(0, "commit") + answer() + answer(),
        # Statements over several shards inside a transaction: each shard joins first (0, then
        # 2), then the read and the write run on the three parts; COMMIT prepares them. Then a
        # write over several shards as a transaction's first statement starts it on shard 0.
        "shard_transaction_scatter": sharded + client(0, "begin")
                                     + client(0, "INSERT INTO telemetry (device_id, v) VALUES (3, 'c')")
                                     + fresh + answer() + answer()
                                     + client(0, "SELECT count(*) FROM telemetry")
                                     + fresh + answer(1, everything) + fresh
                                     + answer(2, everything)
                                     + answer(0) + answer(1) + answer(2)
                                     + client(0, "/* pgvalve: all_shards */ DELETE FROM telemetry")
                                     + answer(0) + answer(1) + answer(2)
                                     + client(0, "commit") + answer(0) + answer(1) + answer(2)
                                     + answer(1) + answer() + answer()
                                     + client(0, "begin")
                                     + client(0, "/* pgvalve: all_shards */ DELETE FROM telemetry")
                                     + reused + answer() + reused + answer(1, everything)
                                     + reused + answer(2, everything)
                                     + answer(0) + answer(1) + answer(2)
                                     + client(0, "rollback") + answer(0) + answer(0) + answer(0),
        # COPY FROM STDIN over every shard: BEGIN and the COPY on each, then two rows for two
        # shards (CopyData kind 11 | 0x80) and CopyDone; each shard's part is prepared and
        # committed. Then a reference table's COPY that the client fails (kind 12 is CopyDone; a
        # Query mid-COPY fails it).
        "scatter_copy": sharded
                        + client(0, "COPY telemetry (device_id, v) FROM STDIN") + shards3
                        + answer(0, everything) + answer(1, everything) + answer(2, everything)
                        + client(11 | 0x80) + client(12)
                        + answer(0, everything) + answer(1, everything) + answer(2, everything)
                        + answer(0, everything) + answer(1, everything) + answer(2, everything)
                        + answer() + answer() + answer()
                        + client(0, "COPY device_types (id, name) FROM STDIN WITH (FORMAT csv)")
                        + reused * 3 + answer(0, everything) + answer(1, everything)
                        + answer(2, everything) + client(11) + client(0)
                        + answer(0, everything) + answer(1, everything) + answer(2, everything)
                        + answer() + answer() + answer(),
        # The pool makes a shard's checkout wait: meanwhile the first shard answers (an error
        # decides a read; a write's part is prepared), a timer fires, the wait ends with a server
        # or none; last the client leaves while a write waits for its third shard.
        "scatter_waits": sharded
                         + client(0, "SELECT count(*) FROM telemetry") + fresh + later
                         + answer(fault=4) + bytes([8, 10]) + pool_answers()
                         + client(0, "/* pgvalve: all_shards */ DELETE FROM telemetry")
                         + fresh + later + answer(0, everything) + pool_answers() + fresh
                         + answer(1, everything) + answer(2, everything)
                         + answer() + answer() + answer()
                         + client(0, "CREATE TABLE archive (device_id bigint)") + fresh * 2
                         + later + answer(0, everything) + pool_answers(7)
                         + answer(1, everything) + answer() + answer()
                         + client(0, "INSERT INTO device_types VALUES (1, 'x')") + fresh * 2
                         + later + bytes([11]),
        # Findings, minimized (prepared statements after a failed pipelined flight; see
        # prepared_statements_test.cpp): DEALLOCATE ALL answered before a Parse and its eviction
        # Close; a failed flight's skipped Parse of a statement prepared again behind it.
        "finding_deallocate_all_eviction": bytes.fromhex("2d00010017626262626272d1767676d1ae6276"),
        "finding_skipped_parse_prepared_again":
            bytes.fromhex("650072646174626262727676626276d1ae62767639767639d1ae627639"),
        # A simple Query between a failed extended-protocol message and its Sync.
        "finding_query_after_failed_execute": bytes.fromhex("00021111111311255711111111b63ef61000113e3e11255711ffffb63e11b63eff113e3eb6"),
        # Pipelined sharded COPYs whose scatters fail at a shard's checkout, one after another
        # (a false alarm of the harness's bounded-resumption check, kept as a deep pipeline).
        "finding_pipelined_failing_scatters": bytes.fromhex(
            "585841414141414141c1" + "41" * 88 + "58" + "ff" * 30),
        # A server that is not PostgreSQL ends the login's settings sync with a ReadyForQuery of
        # its own; its late answers reach the client during a write over all shards.
        "finding_unsolicited_ready_before_scatter":
            bytes.fromhex("ffffe5da010035084675f1f15656565656565621215654"),
        # A shard's server that is not PostgreSQL answers the PREPARE TRANSACTION of a sharded
        # COPY in the step that sends it: that step ends the write and closes the server.
        "finding_prepare_to_a_server_that_goes": bytes.fromhex("7573414141414141414141776e657a25da87ffc63e"),
        # A sharded request whose own Parse replaces the named statement its Bind routes by
        # (scatter_test.cpp: the old text was read after it was freed).
        "finding_parse_replacing_the_routed_statement": bytes.fromhex("0013113e3eff113e6d"),
        # A batch over two shards whose second shard gets no server (its statement is refused on
        # the first, whose server, not PostgreSQL, runs the refusal): the batch then ends on one
        # part, with its decision sent to that link (several_servers() while it runs).
        "finding_batch_ending_on_one_part": bytes.fromhex(
            "0010010242010342010500010245010345010500566172" + "ff" * 63 + "010600ff0600000000060100"),
        # A read over three shards whose second part is cut on its replica during the settings
        # sync: that part runs again under the same link (retry_scatter_part).
        "finding_scatter_part_run_again": bytes.fromhex(
            "00ffffff" + "1a" * 15 + "1e1a00061d00061e00070006000006000001003000000006c1a0060000060000"),
    }


def config_seeds() -> dict:
    minimal = (b"users:\n  - name: app\n    password: secret\n"
               b"databases:\n  telemetry:\n    shards:\n      - primary: 127.0.0.1:5432\n")
    return {
        "minimal": minimal,
        "pool_and_limits": minimal + b"pool:\n  mode: session\n  pool_size: 3\n"
                           b"limits: {max_message_bytes: 4096, message_timeout_ms: 0}\n",
        "env_and_admin": b"listen: ${HOST}:6432\nusers:\n  - {name: ops, password: ${PW}, "
                         b"admin: true}\ndatabases: {t: {shards: [{primary: \"[::1]:5432\"}]}}\n",
        "not_supported": minimal + b"        replicas: [127.0.0.1:5433]\n"
                         b"routing: {reads: replicas}\ntls: {cert: a, key: b}\n",
        "sharded": b"users: [{name: a, password: p}]\ndatabases:\n  t:\n    shards:\n"
                   b"      - {name: s0, primary: 10.0.0.1:5432}\n"
                   b"      - {name: s1, primary: 10.0.0.2:5432}\n"
                   b"    sharding:\n      key: device_id\n      buckets: 16\n"
                   b"      bucket_map: {s0: 0-7, s1: [\"8-11\", \"12-15\"]}\n"
                   b"      tables: [telemetry]\n",
        "anchors": b"x: &a {name: app, password: p}\nusers: [*a, *a]\n",
        "broken": b"users:\n  - name: app\n\tpassword: [x\n",
    }


def write(target: str, seeds: dict) -> None:
    out = HERE / "corpus" / target
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name, data in seeds.items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    write("protocol_fuzz", protocol_seeds())
    write("lexer_fuzz", lexer_seeds())
    write("session_fuzz", session_seeds())
    write("config_fuzz", config_seeds())
