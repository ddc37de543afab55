#include "routing/statement.h"

#include <gtest/gtest.h>

#include <cctype>
#include <random>
#include <string>
#include <vector>

namespace pgvalve::routing {

// gtest finds these by argument-dependent lookup to print values in failure messages.
void PrintTo(StatementKind kind, std::ostream* os) {
  *os << statement_kind_name(kind);
}
void PrintTo(const NormalizedName& name, std::ostream* os) {
  *os << '"' << name.view() << '"';
}

namespace {

using SK = StatementKind;

StatementKind kind_of(std::string_view sql) {
  return classify(sql).kind;
}

TEST(Classify, Empty) {
  EXPECT_EQ(kind_of(""), SK::Empty);
  EXPECT_EQ(kind_of("  -- nothing\n /* at all */ "), SK::Empty);
  EXPECT_EQ(kind_of(";;"), SK::Empty);
  EXPECT_FALSE(classify(";").multiple_statements);
}

TEST(Classify, Begin) {
  EXPECT_EQ(kind_of("BEGIN"), SK::Begin);
  EXPECT_EQ(kind_of("begin;"), SK::Begin);
  EXPECT_EQ(kind_of("begin work"), SK::Begin);
  EXPECT_EQ(kind_of("Begin Transaction"), SK::Begin);
  EXPECT_EQ(kind_of("START TRANSACTION"), SK::Begin);
  EXPECT_FALSE(classify("begin").read_only);
  EXPECT_FALSE(classify("begin;").multiple_statements);
}

TEST(Classify, BeginReadOnly) {
  const StatementInfo info = classify("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY");
  EXPECT_EQ(info.kind, SK::Begin);
  EXPECT_TRUE(info.read_only);
  EXPECT_TRUE(classify("begin read only").read_only);
  EXPECT_TRUE(classify("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE")
                  .read_only);
  EXPECT_FALSE(classify("begin isolation level read committed").read_only);
}

TEST(Classify, TransactionModes) {
  using Flag = StatementInfo::Flag;
  using Isolation = StatementInfo::Isolation;
  StatementInfo info =
      classify("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE");
  EXPECT_EQ(info.transaction_modes, 3);
  EXPECT_EQ(info.isolation, Isolation::Serializable);
  EXPECT_EQ(info.access_read_only, Flag::On);
  EXPECT_EQ(info.deferrable, Flag::On);
  info = classify("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED");
  EXPECT_EQ(info.name.view(), "session_characteristics");
  EXPECT_EQ(info.transaction_modes, 1);
  EXPECT_EQ(info.isolation, Isolation::ReadCommitted);
  EXPECT_EQ(info.access_read_only, Flag::Unset);
  info = classify("set session characteristics as transaction not deferrable");
  EXPECT_EQ(info.transaction_modes, 1);
  EXPECT_EQ(info.deferrable, Flag::Off);
  info = classify("begin isolation level repeatable read read write");
  EXPECT_EQ(info.isolation, Isolation::RepeatableRead);
  EXPECT_EQ(info.access_read_only, Flag::Off);
  EXPECT_EQ(classify("begin isolation level read uncommitted").isolation,
            Isolation::ReadUncommitted);
  EXPECT_EQ(classify("begin").transaction_modes, 0);
}

TEST(Classify, ModesAHotStandbyRefusesAreSeenWhereverTheyAre) {
  EXPECT_TRUE(classify("begin read write read only").standby_refused_mode);
  EXPECT_TRUE(classify("begin read write read only").read_only);  // the last one counts there
  EXPECT_TRUE(classify("begin isolation level serializable, isolation level read committed")
                  .standby_refused_mode);
  EXPECT_TRUE(classify("set transaction read write, read only").standby_refused_mode);
  EXPECT_FALSE(classify("begin read only isolation level repeatable read").standby_refused_mode);
  EXPECT_FALSE(classify("begin").standby_refused_mode);
}

TEST(Classify, StartTransactionReadWrite) {
  const StatementInfo info = classify("start transaction read write");
  EXPECT_EQ(info.kind, SK::Begin);
  EXPECT_FALSE(info.read_only);
}

TEST(Classify, StartWithoutTransactionIsOther) {
  EXPECT_EQ(kind_of("start replication"), SK::Other);
}

TEST(Classify, Commit) {
  EXPECT_EQ(kind_of("COMMIT"), SK::Commit);
  EXPECT_EQ(kind_of("commit work;"), SK::Commit);
  EXPECT_EQ(kind_of("END"), SK::Commit);
  EXPECT_EQ(kind_of("end transaction"), SK::Commit);
  EXPECT_FALSE(classify("commit").and_chain);
}

// Every field of two results, the second's offsets `shift` bytes further on.
void expect_same_info(const StatementInfo& a, const StatementInfo& b, std::size_t shift,
                      std::string_view sql) {
  EXPECT_EQ(a.kind, b.kind) << sql;
  EXPECT_EQ(a.multiple_statements, b.multiple_statements) << sql;
  EXPECT_EQ(a.read_only, b.read_only) << sql;
  EXPECT_EQ(a.transaction_modes, b.transaction_modes) << sql;
  EXPECT_EQ(a.access_read_only, b.access_read_only) << sql;
  EXPECT_EQ(a.isolation, b.isolation) << sql;
  EXPECT_EQ(a.deferrable, b.deferrable) << sql;
  EXPECT_EQ(a.and_chain, b.and_chain) << sql;
  EXPECT_EQ(a.temporary, b.temporary) << sql;
  EXPECT_EQ(a.on_commit_drop, b.on_commit_drop) << sql;
  EXPECT_EQ(a.with_hold, b.with_hold) << sql;
  EXPECT_EQ(a.discard_all, b.discard_all) << sql;
  EXPECT_EQ(a.all, b.all) << sql;
  EXPECT_EQ(a.value_is_default, b.value_is_default) << sql;
  EXPECT_EQ(a.calls_advisory_session_lock, b.calls_advisory_session_lock) << sql;
  EXPECT_EQ(a.calls_advisory_unlock, b.calls_advisory_unlock) << sql;
  EXPECT_EQ(a.set_config, b.set_config) << sql;
  EXPECT_EQ(a.body_sets, b.body_sets) << sql;
  EXPECT_EQ(a.body_listens, b.body_listens) << sql;
  EXPECT_EQ(a.opaque, b.opaque) << sql;
  EXPECT_EQ(a.set_config_name, b.set_config_name) << sql;
  EXPECT_EQ(a.set_config_value, b.set_config_value) << sql;
  EXPECT_EQ(a.name_unsupported, b.name_unsupported) << sql;
  EXPECT_EQ(a.name.view(), b.name.view()) << sql;
  EXPECT_EQ(a.raw_name, b.raw_name) << sql;
  EXPECT_EQ(a.value, b.value) << sql;
  EXPECT_EQ(a.hint, b.hint) << sql;
  EXPECT_EQ(a.text, b.text) << sql;
  EXPECT_EQ(a.next_offset + shift, b.next_offset) << sql;
}

// BEGIN, COMMIT, END, ROLLBACK and ABORT alone are read without the lexer: the result is what
// the lexer pass gives for the same statement behind a comment (which only the lexer reads).
TEST(Classify, BareTransactionWordsAsTheLexerReadsThem) {
  for (const char* word : {"BEGIN", "begin", "Commit", "END", "rollback", "ABORT"}) {
    for (const char* around : {"%", " %", "\n\t%;", "% ;", "%;;", "%; ;\r\n", "%;  "}) {
      std::string sql = around;
      sql.replace(sql.find('%'), 1, word);
      const std::string behind_comment = "/* c */ " + sql;
      expect_same_info(classify(sql), classify(behind_comment), 8, sql);
    }
  }
  // Not alone: the lexer pass decides.
  EXPECT_TRUE(classify("begin; select 1").multiple_statements);
  EXPECT_TRUE(classify("commit and chain").and_chain);
  EXPECT_EQ(kind_of("begin_x"), SK::Other);
  EXPECT_EQ(kind_of("end1"), SK::Other);
  EXPECT_EQ(kind_of("abort\f"), SK::Rollback);
  EXPECT_EQ(classify("/* pgvalve: primary */ begin").hint, std::string_view("primary"));
}

TEST(Classify, CommitAndChain) {
  const StatementInfo info = classify("commit and chain");
  EXPECT_EQ(info.kind, SK::Commit);
  EXPECT_TRUE(info.and_chain);
  EXPECT_FALSE(classify("COMMIT AND NO CHAIN").and_chain);
  EXPECT_TRUE(classify("rollback transaction and chain").and_chain);
}

TEST(Classify, Rollback) {
  EXPECT_EQ(kind_of("ROLLBACK"), SK::Rollback);
  EXPECT_EQ(kind_of("rollback work"), SK::Rollback);
  EXPECT_EQ(kind_of("ABORT"), SK::Rollback);
  EXPECT_EQ(kind_of("abort transaction;"), SK::Rollback);
}

TEST(Classify, RollbackToSavepoint) {
  StatementInfo info = classify("ROLLBACK TO SAVEPOINT sp1");
  EXPECT_EQ(info.kind, SK::RollbackToSavepoint);
  EXPECT_EQ(info.name, "sp1");
  info = classify("rollback work to \"Sp\"");
  EXPECT_EQ(info.kind, SK::RollbackToSavepoint);
  EXPECT_EQ(info.name, "Sp");
  info = classify("rollback to savepoint");  // a savepoint called "savepoint"
  EXPECT_EQ(info.kind, SK::RollbackToSavepoint);
  EXPECT_EQ(info.name, "savepoint");
}

TEST(Classify, SavepointAndRelease) {
  StatementInfo info = classify("SAVEPOINT My_Point");
  EXPECT_EQ(info.kind, SK::Savepoint);
  EXPECT_EQ(info.name, "my_point");
  EXPECT_EQ(info.raw_name, "My_Point");
  info = classify("RELEASE SAVEPOINT sp");
  EXPECT_EQ(info.kind, SK::Release);
  EXPECT_EQ(info.name, "sp");
  info = classify("release sp2");
  EXPECT_EQ(info.kind, SK::Release);
  EXPECT_EQ(info.name, "sp2");
}

TEST(Classify, TwoPhaseCommit) {
  StatementInfo info = classify("PREPARE TRANSACTION 'tx-1'");
  EXPECT_EQ(info.kind, SK::PrepareTransaction);
  EXPECT_EQ(info.value, "'tx-1'");
  info = classify("COMMIT PREPARED 'tx-1';");
  EXPECT_EQ(info.kind, SK::CommitPrepared);
  EXPECT_EQ(info.value, "'tx-1'");
  info = classify("rollback prepared 'tx-1'");
  EXPECT_EQ(info.kind, SK::RollbackPrepared);
  EXPECT_EQ(info.value, "'tx-1'");
}

TEST(Classify, SetGeneric) {
  StatementInfo info = classify("SET search_path = a, b;");
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_EQ(info.name, "search_path");
  EXPECT_EQ(info.value, "a, b");
  info = classify("set application_name to 'dash board'  -- why\n");
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_EQ(info.name, "application_name");
  EXPECT_EQ(info.value, "'dash board'");
  EXPECT_FALSE(info.value_is_default);
}

TEST(Classify, SetTimezoneSpellings) {
  StatementInfo info = classify("set \"TimeZone\" to 'UTC'");
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_EQ(info.name, "timezone");
  EXPECT_EQ(info.raw_name, "\"TimeZone\"");
  EXPECT_EQ(info.value, "'UTC'");
  info = classify("SET timezone TO 'Europe/Berlin'");
  EXPECT_EQ(info.name, "timezone");
  EXPECT_EQ(info.value, "'Europe/Berlin'");
  info = classify("set time zone 'UTC'");
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_EQ(info.name, "timezone");
  EXPECT_EQ(info.raw_name, "time zone");
  EXPECT_EQ(info.value, "'UTC'");
  info = classify("SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE");
  EXPECT_EQ(info.name, "timezone");
  EXPECT_EQ(info.value, "INTERVAL '+02:00' HOUR TO MINUTE");
}

TEST(Classify, SetSpecialForms) {
  StatementInfo info = classify("SET NAMES 'UTF8'");
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_EQ(info.name, "client_encoding");
  EXPECT_EQ(info.value, "'UTF8'");
  info = classify("set schema 'telemetry'");
  EXPECT_EQ(info.name, "search_path");
  EXPECT_EQ(info.value, "'telemetry'");
  info = classify("SET ROLE reader");
  EXPECT_EQ(info.name, "role");
  EXPECT_EQ(info.value, "reader");
  info = classify("SET SESSION AUTHORIZATION 'bob'");
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_EQ(info.name, "session_authorization");
  EXPECT_EQ(info.value, "'bob'");
  info = classify("set xml option document");
  EXPECT_EQ(info.name, "xmloption");
  EXPECT_EQ(info.value, "document");
}

TEST(Classify, SetSessionModifier) {
  StatementInfo info = classify("SET SESSION statement_timeout = 5000");
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_EQ(info.name, "statement_timeout");
  EXPECT_EQ(info.value, "5000");
  info = classify("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY");
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_EQ(info.name, "session_characteristics");
  EXPECT_EQ(info.value, "READ ONLY");
  EXPECT_TRUE(info.read_only);
}

TEST(Classify, SetDefault) {
  EXPECT_TRUE(classify("SET work_mem TO DEFAULT").value_is_default);
  EXPECT_TRUE(classify("set work_mem = default;").value_is_default);
  EXPECT_FALSE(classify("set work_mem = 'default'").value_is_default);
  EXPECT_TRUE(classify("SET TIME ZONE LOCAL").value_is_default);
  EXPECT_TRUE(classify("SET TIME ZONE DEFAULT").value_is_default);
  EXPECT_TRUE(classify("SET NAMES").value_is_default);
}

TEST(Classify, SetQualifiedName) {
  const StatementInfo info = classify("SET pgvalve.Device_Id = '42'");
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_EQ(info.name, "pgvalve.device_id");
  EXPECT_EQ(info.raw_name, "pgvalve.Device_Id");
  EXPECT_EQ(info.value, "'42'");
}

TEST(Classify, SetLocal) {
  StatementInfo info = classify("SET LOCAL x = 1");
  EXPECT_EQ(info.kind, SK::SetLocal);
  EXPECT_EQ(info.name, "x");
  EXPECT_EQ(info.value, "1");
  info = classify("set local time zone 'UTC'");
  EXPECT_EQ(info.kind, SK::SetLocal);
  EXPECT_EQ(info.name, "timezone");
}

TEST(Classify, SetTransaction) {
  StatementInfo info = classify("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY");
  EXPECT_EQ(info.kind, SK::SetTransaction);
  EXPECT_TRUE(info.read_only);
  EXPECT_EQ(info.value, "ISOLATION LEVEL SERIALIZABLE, READ ONLY");
  info = classify("set transaction snapshot '00000003-0000001B-1'");
  EXPECT_EQ(info.kind, SK::SetTransaction);
  EXPECT_FALSE(info.read_only);
}

// SET CONSTRAINTS ends with its transaction: no setting named "constraints" to follow (a RESET
// of one would fail on the next client's server).
TEST(Classify, SetConstraintsIsTheTransactions) {
  StatementInfo info = classify("SET CONSTRAINTS ALL DEFERRED");
  EXPECT_EQ(info.kind, SK::SetTransaction);
  EXPECT_TRUE(info.name.empty());
  EXPECT_EQ(info.value, "ALL DEFERRED");
  info = classify("set constraints fk_device, public.fk_type immediate;");
  EXPECT_EQ(info.kind, SK::SetTransaction);
  EXPECT_TRUE(info.name.empty());
  EXPECT_FALSE(info.read_only);
}

// A replica refuses writes: what changes no data (transaction control, settings, cursors) stays
// with a request's reads there.
TEST(Classify, WhatTouchesData) {
  for (const char* sql : {"select 1", "insert into t values (1)", "create table t (x int)",
                          "truncate t", "explain analyze select 1", "notify c"}) {
    EXPECT_TRUE(touches_data(classify(sql).kind)) << sql;
  }
  for (const char* sql : {"begin", "commit", "set work_mem = '1MB'", "show work_mem",
                          "declare c cursor for select 1", "listen c", "savepoint s"}) {
    EXPECT_FALSE(touches_data(classify(sql).kind)) << sql;
  }
}

TEST(Classify, Reset) {
  StatementInfo info = classify("RESET search_path");
  EXPECT_EQ(info.kind, SK::Reset);
  EXPECT_EQ(info.name, "search_path");
  info = classify("reset \"TimeZone\"");
  EXPECT_EQ(info.name, "timezone");
  info = classify("RESET TIME ZONE");
  EXPECT_EQ(info.name, "timezone");
  info = classify("reset session authorization");
  EXPECT_EQ(info.name, "session_authorization");
  info = classify("reset transaction isolation level");
  EXPECT_EQ(info.name, "transaction_isolation");
}

TEST(Classify, ResetAll) {
  const StatementInfo info = classify("RESET ALL;");
  EXPECT_EQ(info.kind, SK::ResetAll);
  EXPECT_EQ(info.name, "all");
}

TEST(Classify, Show) {
  StatementInfo info = classify("SHOW TimeZone");
  EXPECT_EQ(info.kind, SK::Show);
  EXPECT_EQ(info.name, "timezone");
  info = classify("show time zone");
  EXPECT_EQ(info.name, "timezone");
  info = classify("SHOW TRANSACTION ISOLATION LEVEL");
  EXPECT_EQ(info.name, "transaction_isolation");
  info = classify("show all");
  EXPECT_EQ(info.name, "all");
  info = classify("SHOW pgvalve.route");
  EXPECT_EQ(info.name, "pgvalve.route");
}

TEST(Classify, Discard) {
  StatementInfo info = classify("DISCARD ALL");
  EXPECT_EQ(info.kind, SK::Discard);
  EXPECT_TRUE(info.discard_all);
  EXPECT_EQ(info.name, "all");
  for (std::string_view sql :
       {"discard plans", "DISCARD SEQUENCES", "discard temp", "discard temporary"}) {
    info = classify(sql);
    EXPECT_EQ(info.kind, SK::Discard) << sql;
    EXPECT_FALSE(info.discard_all) << sql;
  }
  EXPECT_EQ(classify("discard temporary").name, "temp");
}

TEST(Classify, Deallocate) {
  StatementInfo info = classify("DEALLOCATE stmt1");
  EXPECT_EQ(info.kind, SK::Deallocate);
  EXPECT_EQ(info.name, "stmt1");
  EXPECT_FALSE(info.all);
  info = classify("deallocate prepare \"S_1\"");
  EXPECT_EQ(info.name, "S_1");
  info = classify("DEALLOCATE ALL");
  EXPECT_TRUE(info.all);
  EXPECT_TRUE(info.name.empty());
  info = classify("deallocate prepare all");
  EXPECT_TRUE(info.all);
  info = classify("deallocate prepare");  // a statement called "prepare"
  EXPECT_EQ(info.name, "prepare");
}

TEST(Classify, PrepareAndExecute) {
  StatementInfo info = classify("PREPARE Q1 (int) AS SELECT * FROM t WHERE id = $1");
  EXPECT_EQ(info.kind, SK::Prepare);
  EXPECT_EQ(info.name, "q1");
  info = classify("EXECUTE q1(42)");
  EXPECT_EQ(info.kind, SK::Execute);
  EXPECT_EQ(info.name, "q1");
  info = classify("prepare transaction as select 1");  // a statement called "transaction"
  EXPECT_EQ(info.kind, SK::Prepare);
  EXPECT_EQ(info.name, "transaction");
}

TEST(Classify, ListenUnlistenNotify) {
  StatementInfo info = classify("LISTEN Device_Events");
  EXPECT_EQ(info.kind, SK::Listen);
  EXPECT_EQ(info.name, "device_events");
  info = classify("unlisten \"Chan\"");
  EXPECT_EQ(info.kind, SK::Unlisten);
  EXPECT_EQ(info.name, "Chan");
  EXPECT_FALSE(info.all);
  info = classify("UNLISTEN *");
  EXPECT_EQ(info.kind, SK::Unlisten);
  EXPECT_TRUE(info.all);
  info = classify("NOTIFY chan, 'payload'");
  EXPECT_EQ(info.kind, SK::Notify);
  EXPECT_EQ(info.name, "chan");
  EXPECT_EQ(info.value, "'payload'");
}

// pgvalve answers LISTEN/UNLISTEN through the shared listening connection only when the
// statement is exactly one channel name: anything else goes to the server, which gives the
// real error. A quoted "*" is a channel called *, not UNLISTEN *.
TEST(Classify, ListenChannelOnly) {
  EXPECT_TRUE(classify("LISTEN a").channel_only);
  EXPECT_TRUE(classify("listen \"MiXed\" ;").channel_only);
  EXPECT_TRUE(classify("UNLISTEN a").channel_only);
  EXPECT_TRUE(classify("UNLISTEN * ;").channel_only);
  EXPECT_FALSE(classify("LISTEN ext1 junk").channel_only);
  EXPECT_FALSE(classify("LISTEN a.b").channel_only);
  EXPECT_FALSE(classify("LISTEN a, b").channel_only);
  EXPECT_FALSE(classify("LISTEN").channel_only);
  EXPECT_FALSE(classify("UNLISTEN * junk").channel_only);
  EXPECT_FALSE(classify("UNLISTEN a b").channel_only);
  StatementInfo info = classify("UNLISTEN \"*\"");
  EXPECT_TRUE(info.channel_only);
  EXPECT_FALSE(info.all);
  EXPECT_EQ(info.name, "*");
}

TEST(Classify, DataStatements) {
  EXPECT_EQ(kind_of("SELECT 1"), SK::Select);
  EXPECT_EQ(kind_of("values (1), (2)"), SK::Select);
  EXPECT_EQ(kind_of("TABLE telemetry"), SK::Select);
  EXPECT_EQ(kind_of("((select 1) union (select 2))"), SK::Select);
  EXPECT_EQ(kind_of("INSERT INTO t VALUES (1)"), SK::Insert);
  EXPECT_EQ(kind_of("update t set a = 1"), SK::Update);
  EXPECT_EQ(kind_of("DELETE FROM t"), SK::Delete);
  EXPECT_EQ(kind_of("copy t from stdin"), SK::Copy);
  EXPECT_EQ(kind_of("explain select 1"), SK::Explain);
}

TEST(Classify, WithTakesTheMainStatementKind) {
  EXPECT_EQ(kind_of("WITH x AS (SELECT 1) SELECT * FROM x"), SK::Select);
  EXPECT_EQ(kind_of("with recursive r(n) as (select 1 union all select n+1 from r) "
                    "insert into t select n from r"),
            SK::Insert);
  EXPECT_EQ(kind_of("WITH d AS (DELETE FROM t RETURNING *) UPDATE u SET a = 1"), SK::Update);
  EXPECT_EQ(kind_of("with d as (select 1) delete from t"), SK::Delete);
}

TEST(Classify, Declare) {
  StatementInfo info = classify("DECLARE c CURSOR WITH HOLD FOR select 1");
  EXPECT_EQ(info.kind, SK::Declare);
  EXPECT_EQ(info.name, "c");
  EXPECT_TRUE(info.with_hold);
  info = classify("declare c binary no scroll cursor without hold for select 1");
  EXPECT_FALSE(info.with_hold);
  info = classify("declare c cursor for with hold as (select 1) select * from hold");
  EXPECT_FALSE(info.with_hold);
}

TEST(Classify, CreateAlterDrop) {
  StatementInfo info = classify("CREATE TABLE t (a int)");
  EXPECT_EQ(info.kind, SK::Create);
  EXPECT_FALSE(info.temporary);
  EXPECT_EQ(kind_of("alter table t add b int"), SK::Alter);
  EXPECT_EQ(kind_of("DROP TABLE t"), SK::Drop);
}

TEST(Classify, CreateTemporary) {
  for (std::string_view sql :
       {"CREATE TEMP TABLE t (a int)", "create temporary table t as select 1",
        "CREATE LOCAL TEMPORARY TABLE t (a int)", "create global temp table t (a int)",
        "CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "create table pg_temp.t (a int)",
        "create table \"pg_temp\".t (a int)", "CREATE FUNCTION pg_temp.f() RETURNS int"}) {
    const StatementInfo info = classify(sql);
    EXPECT_EQ(info.kind, SK::Create) << sql;
    EXPECT_TRUE(info.temporary) << sql;
    EXPECT_FALSE(info.on_commit_drop) << sql;
  }
  const StatementInfo info = classify("create temp table t (a int) on commit drop");
  EXPECT_TRUE(info.temporary);
  EXPECT_TRUE(info.on_commit_drop);
  EXPECT_FALSE(classify("create temp table t (a int) on commit delete rows").on_commit_drop);
  // A quoted name is case-sensitive: "PG_TEMP" is an ordinary schema.
  EXPECT_FALSE(classify("create table \"PG_TEMP\".t (a int)").temporary);
}

TEST(Classify, SelectIntoTemp) {
  StatementInfo info = classify("SELECT * INTO TEMP t FROM u");
  EXPECT_EQ(info.kind, SK::Select);
  EXPECT_TRUE(info.temporary);
  EXPECT_TRUE(classify("select 1 into local temporary t").temporary);
  EXPECT_FALSE(classify("select 1 into t").temporary);
  EXPECT_FALSE(classify("select temp from t").temporary);
  // After WITH too (found by a code review: it was not looked for there).
  info = classify("WITH x AS (SELECT 1 AS a) SELECT * INTO TEMP t FROM x");
  EXPECT_EQ(info.kind, SK::Select);
  EXPECT_TRUE(info.temporary);
  EXPECT_TRUE(info.selects_into);
}

// SELECT … INTO makes a table; with pg_temp first in search_path a temporary one, so the
// session asks the server afterwards. WITH … INSERT INTO makes none.
TEST(Classify, SelectIntoMakesATable) {
  for (std::string_view sql : {"select * into t from u", "SELECT 1 AS a INTO t",
                               "with x as (select 1) select * into t from x"}) {
    const StatementInfo info = classify(sql);
    EXPECT_TRUE(info.selects_into) << sql;
    EXPECT_FALSE(info.temporary) << sql;
  }
  for (std::string_view sql :
       {"with x as (select 1) insert into t select * from x", "insert into t select 1",
        "select (select 1 into) from t", "select 'into' from t", "select intox from t"}) {
    EXPECT_FALSE(classify(sql).selects_into) << sql;
  }
}

TEST(Classify, OtherStatements) {
  EXPECT_EQ(kind_of("VACUUM t"), SK::Other);
  EXPECT_EQ(kind_of("truncate t"), SK::Other);
  EXPECT_EQ(kind_of("merge into t using u on true when matched then do nothing"), SK::Other);
  EXPECT_EQ(kind_of("'not sql'"), SK::Other);
  EXPECT_EQ(kind_of("\"ident\""), SK::Other);
  EXPECT_EQ(kind_of("select 'unterminated"), SK::Select);
  EXPECT_EQ(kind_of("'unterminated"), SK::Other);
  EXPECT_EQ(kind_of("/* unterminated comment"), SK::Other);
}

TEST(Classify, HintCommentsAndWhitespaceSkipped) {
  const StatementInfo info = classify("  /* pgvalve: primary */\n select 1");
  EXPECT_EQ(info.kind, SK::Select);
  EXPECT_EQ(info.hint, "primary");
  EXPECT_EQ(info.text, "select 1");
  EXPECT_EQ(kind_of("-- hello\n/* a /* nested */ b */ BEGIN"), SK::Begin);
}

TEST(Classify, KeywordInsideStringIsNotAStatement) {
  const StatementInfo info = classify("select 'begin'");
  EXPECT_EQ(info.kind, SK::Select);
  EXPECT_FALSE(info.multiple_statements);
}

TEST(Classify, MultipleStatements) {
  const std::string_view sql = "select 1; select 2";
  const StatementInfo info = classify(sql);
  EXPECT_EQ(info.kind, SK::Select);
  EXPECT_TRUE(info.multiple_statements);
  EXPECT_EQ(info.text, "select 1");
  EXPECT_EQ(info.next_offset, 9u);
  const StatementInfo second = classify(sql.substr(info.next_offset));
  EXPECT_EQ(second.text, "select 2");
  EXPECT_FALSE(second.multiple_statements);
  EXPECT_EQ(second.next_offset, sql.size() - info.next_offset);

  EXPECT_TRUE(classify("BEGIN; UPDATE t SET a = 1; COMMIT").multiple_statements);
  EXPECT_EQ(kind_of("BEGIN; UPDATE t SET a = 1; COMMIT"), SK::Begin);
}

TEST(Classify, TrailingSemicolonsAndCommentsAreNotAnotherStatement) {
  EXPECT_FALSE(classify("select 1;").multiple_statements);
  EXPECT_FALSE(classify("select 1; ; -- bye\n /* c */").multiple_statements);
}

TEST(Classify, SemicolonInsideLiteralsAndCommentsDoesNotSplit) {
  for (std::string_view sql : {"select ';'", "select $$;$$", "select 1 -- ; select 2",
                               "select /* ; */ 1", "select \";\" from t", "select E'\\';'"}) {
    const StatementInfo info = classify(sql);
    EXPECT_FALSE(info.multiple_statements) << sql;
    EXPECT_EQ(info.text, sql.substr(0, info.text.size())) << sql;
  }
  EXPECT_EQ(classify("select ';' ; select 2").text, "select ';'");
}

TEST(Classify, SemicolonInsideParenthesesDoesNotSplit) {
  // CREATE RULE ... DO (a; b) is one statement.
  EXPECT_FALSE(
      classify("create rule r as on insert to t do also (insert into u values (1); notify c)")
          .multiple_statements);
}

TEST(Classify, SqlStandardFunctionBodyIsOneStatement) {
  const StatementInfo info = classify(
      "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC "
      "select case when true then 1 end; select 2; END; select 3");
  EXPECT_EQ(info.kind, SK::Create);
  EXPECT_TRUE(info.multiple_statements);
  EXPECT_TRUE(info.text.ends_with("END")) << info.text;
}

TEST(Classify, AdvisorySessionLocks) {
  for (std::string_view sql :
       {"select pg_advisory_lock(1)", "SELECT PG_TRY_ADVISORY_LOCK(1, 2)",
        "select pg_catalog.pg_advisory_lock_shared (42)", "select pg_try_advisory_lock_shared(1)",
        "select \"pg_advisory_lock\"(1)", "select 1 from t where pg_advisory_lock(id) is not null",
        "DO $$BEGIN PERFORM pg_advisory_lock(7); END$$",
        "do language plpgsql 'begin perform pg_try_advisory_lock(7); end'"}) {
    EXPECT_TRUE(classify(sql).calls_advisory_session_lock) << sql;
  }
  for (std::string_view sql :
       {"select pg_advisory_xact_lock(1)", "select pg_advisory_unlock(1)",
        "select 'pg_advisory_lock(1)'", "select pg_advisory_lock from t",
        "select \"PG_ADVISORY_LOCK\"(1)", "select 1; select pg_advisory_lock(1)",
        "create function f() returns void as $$ select pg_advisory_lock(1) $$ language sql"}) {
    EXPECT_FALSE(classify(sql).calls_advisory_session_lock) << sql;
  }
}

TEST(Classify, SessionStateChangedInsideDoBodies) {
  for (std::string_view sql :
       {"DO $$BEGIN SET search_path = app; END$$", "do $$ begin reset all; end $$",
        "DO $$BEGIN IF true THEN SET ROLE admin; END IF; END$$",
        "DO $$DECLARE r text; BEGIN r := 'x'; set session authorization alice; END$$",
        "DO $$BEGIN EXECUTE 'SET search_path TO ' || quote_ident('app'); END$$",
        "DO $b$BEGIN EXECUTE $x$RESET ROLE$x$; END$b$", "do 'begin set work_mem = 1; end'"}) {
    EXPECT_TRUE(classify(sql).body_sets) << sql;
  }
  for (std::string_view sql :
       {"DO $$BEGIN UPDATE t SET a = 1; END$$",
        "DO $$BEGIN INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET a = 2; END$$",
        "select 'SET search_path = x'", "SET search_path = x",
        "create function f() returns void as $$ set search_path = x $$ language sql"}) {
    EXPECT_FALSE(classify(sql).body_sets) << sql;
  }
  EXPECT_TRUE(classify("DO $$BEGIN LISTEN jobs; END$$").body_listens);
  EXPECT_TRUE(classify("DO $$BEGIN EXECUTE 'listen ' || 'jobs'; END$$").body_listens);
  EXPECT_FALSE(classify("DO $$BEGIN NOTIFY jobs; END$$").body_listens);
  EXPECT_TRUE(classify("DO $$BEGIN CREATE TEMP TABLE t (a int); END$$").temporary);
  EXPECT_TRUE(classify("DO $$BEGIN create local temporary table t (a int); END$$").temporary);
  EXPECT_FALSE(classify("DO $$BEGIN CREATE TABLE temp (a int); END$$").temporary);
}

TEST(Classify, NamesFollowIdentifierRules) {
  EXPECT_EQ(classify("PREPARE \"My\"\"Stmt\" AS select 1").name, "My\"Stmt");
  EXPECT_EQ(classify("execute MyStmt").name, "mystmt");
  const StatementInfo unicode = classify("prepare U&\"\\0061\" as select 1");
  EXPECT_TRUE(unicode.name.empty());
  EXPECT_TRUE(unicode.name_unsupported);
  EXPECT_EQ(unicode.raw_name, "U&\"\\0061\"");
}

TEST(Classify, LongNamesAreCutLikePostgres) {
  const std::string name(70, 'a');
  const StatementInfo info = classify("prepare " + name + " as select 1");
  EXPECT_EQ(info.name.view(), std::string(63, 'a'));
  // 62 ASCII bytes then a 2-byte character: cutting at 63 would split it, so 62 remain.
  const std::string utf8 = std::string(62, 'b') + "\xC3\xA9" + "cc";
  EXPECT_EQ(classify("savepoint " + utf8).name.view(), std::string(62, 'b'));
}

TEST(Classify, VeryLongParameterNameIsUnsupported) {
  std::string name;
  for (int i = 0; i < 5; ++i)
    name += (i ? "." : "") + std::string(60, 'x');
  const std::string sql = "set " + name + " = 1";
  const StatementInfo info = classify(sql);
  EXPECT_EQ(info.kind, SK::Set);
  EXPECT_TRUE(info.name_unsupported);
  EXPECT_TRUE(info.name.empty());
  EXPECT_EQ(info.raw_name, name);
  EXPECT_EQ(info.value, "1");
}

TEST(Classify, NameSurvivesCopy) {
  StatementInfo copy;
  {
    const std::string sql = "SET TimeZone = 'UTC'";
    copy = classify(sql);
  }
  EXPECT_EQ(copy.name, "timezone");
}

}  // namespace
}  // namespace pgvalve::routing

namespace pgvalve::routing {
namespace {

TEST(PlainStatement, EverydayStatementsNeedNoCloserLook) {
  for (const char* sql : {"select 1", "  SELECT abalance FROM a WHERE aid = 5;",
                          "insert into t values (1) ;  ", "With x as (select 1) select * from x",
                          "values (1)", "update t set a = 1", "delete from t"}) {
    EXPECT_TRUE(plain_statement(sql)) << sql;
  }
}

TEST(PlainStatement, AnythingElseIsLookedAtCloser) {
  for (const char* sql :
       {"set a = 1", "begin", "", "select 1; select 2", "select 1;;x", "SELECT PG_ADVISORY_LOCK(1)",
        "select 1 into Temp t", "select set_config('a', 'b', false)", "select 1 /* temporary */",
        "select * from pg_temp.t", "select * from pg_temp_3.t", "select temp_c from t",
        // SELECT … INTO makes a table (a temporary one with pg_temp first in search_path).
        "select * into t from u", "with x as (select 1) select * INTO t from x",
        "with x as (select 1) insert into t select * from x",
        // A U&"" identifier may spell set_config or an advisory lock: looked at closer.
        R"(select U&"\0073et_config"('role', 'r', false))", R"(select 1 from u&"t")"}) {
    EXPECT_FALSE(plain_statement(sql)) << sql;
  }
  EXPECT_TRUE(plain_statement("select a & b from t"));
  // "into" as part of a word, or in an INSERT, is nothing.
  for (const char* sql : {"select pinto, into_x, intox from t", "insert into t values (1)",
                          "INSERT INTO t SELECT * FROM u", "update t set a = 1 where b = 'c'"}) {
    EXPECT_TRUE(plain_statement(sql)) << sql;
  }
}

TEST(Classify, SetConfigWithParameters) {
  using SC = StatementInfo::SetConfig;
  StatementInfo info = classify("select set_config('app.tenant', $1, false)");
  EXPECT_EQ(info.set_config, SC::SessionBound);
  EXPECT_EQ(info.set_config_name, "'app.tenant'");
  EXPECT_EQ(info.set_config_value, "$1");
  EXPECT_EQ(classify("SELECT pg_catalog.set_config($1, $2, false)").set_config, SC::SessionBound);
  // A local one is replayed as text on the shards a transaction joins: not with parameters.
  EXPECT_EQ(classify("select set_config('a', $1, true)").set_config, SC::Unknown);
  EXPECT_EQ(classify("select set_config('a', $1::text, false)").set_config, SC::Unknown);
  EXPECT_EQ(classify("select set_config('a', 'b', false)").set_config, SC::Session);
}

TEST(Classify, WhatADoBlockOrAUnicodeNamedCallRunsIsOpaque) {
  EXPECT_TRUE(classify("DO $$ BEGIN EXECUTE 'CREATE TE' || 'MP TABLE x (a int)'; END $$").opaque);
  const StatementInfo call = classify(R"(select U&"\0073et_config"('role', 'r', false))");
  EXPECT_TRUE(call.opaque);
  EXPECT_EQ(call.set_config, StatementInfo::SetConfig::Unknown);
  const StatementInfo escaped =
      classify(R"(select U&"!0073et_config" UESCAPE '!'('role', 'r', false))");
  EXPECT_TRUE(escaped.opaque);
  EXPECT_EQ(escaped.set_config, StatementInfo::SetConfig::Unknown);
  EXPECT_FALSE(classify("select f(1)").opaque);
}

// Telemetry names its columns temperature: "temp" inside a longer word is no TEMP keyword.
TEST(PlainStatement, TempInsideALongerWordIsNoTempKeyword) {
  for (const char* sql :
       {"select temperature from readings", "INSERT INTO r (device_id, Temperature) VALUES (1, 2)",
        "select attempt from t", "select tempo, contempt from t", "select temporaryx from t"}) {
    EXPECT_TRUE(plain_statement(sql)) << sql;
  }
}

// The scan looks at eight positions at a time: each word is found wherever it stands, in any
// case, and the near misses around it are not.
TEST(PlainStatement, SessionStateWordsAreFoundAtEveryOffset) {
  struct Word {
    const char* text;
    char pad;  // "temp" only counts with no letter around it
  };
  for (const Word word :
       {Word{"temp", '_'}, Word{"TEMP", '1'}, Word{"TemPorary", '_'}, Word{"advisory", 'x'},
        Word{"Pg_Advisory_Lock", 'x'}, Word{"set_config", 'x'}, Word{"SET_CONFIG", 'x'}}) {
    for (std::size_t pad = 0; pad < 24; ++pad) {
      for (std::size_t tail = 0; tail < 10; ++tail) {
        const std::string sql =
            "select " + std::string(pad, word.pad) + word.text + std::string(tail, word.pad) + ";";
        EXPECT_FALSE(plain_statement(sql)) << sql;
      }
    }
  }
  for (const char* near : {"tem_p", "tmp", "xtemp", "tempx", "advisor", "adv_isory", "set-config",
                           "set_confi", "setconfig", "set__config"}) {
    for (std::size_t pad = 0; pad < 24; ++pad) {
      const std::string sql = "select " + std::string(pad, 'x') + near + " from t";
      EXPECT_TRUE(plain_statement(sql)) << sql;
    }
  }
}

// Against a plain substring search (for "temp": one with no letter around it), over random
// text made of pieces of the words.
TEST(PlainStatement, AgreesWithASubstringSearch) {
  std::mt19937 random(42);
  const std::vector<std::string> pieces = {
      "temp",       "TE", "mp",    "t",    "advisory", "ADVIS", "ory", "a",  "set_",  "CONFIG",
      "set_config", "s",  "et_co", "nfig", "x",        " ",     "_",   "Mp", "orary", "er"};
  int found = 0;
  for (int n = 0; n < 20000; ++n) {
    std::string body;
    for (auto k = random() % 12; k > 0; --k)
      body += pieces[random() % pieces.size()];
    std::string lowered = body;
    for (char& c : lowered)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const std::string text = "select " + lowered;
    auto letter = [&](std::size_t i) { return i < text.size() && std::isalpha(text[i]) != 0; };
    bool temp = false;
    for (auto at = text.find("temp"); at != std::string::npos; at = text.find("temp", at + 1)) {
      const std::size_t end = text.compare(at, 9, "temporary") == 0 ? at + 9 : at + 4;
      temp = temp || (!letter(at - 1) && !letter(end));
    }
    const bool state = temp || lowered.find("advisory") != std::string::npos ||
                       lowered.find("set_config") != std::string::npos;
    EXPECT_EQ(plain_statement("select " + body), !state) << body;
    found += state;
  }
  EXPECT_GT(found, 2000);
  EXPECT_LT(found, 18000);
}

// asyncpg's Cursor.forward() runs MOVE FORWARD n <portal>: the portal is the last name.
TEST(FetchedCursor, IsTheLastNameOfFetchOrMoveAsPostgresqlLooksItUp) {
  EXPECT_EQ(fetched_cursor("MOVE FORWARD 3 __asyncpg_portal_3__").view(), "__asyncpg_portal_3__");
  EXPECT_EQ(fetched_cursor("fetch all from C_1;").view(), "c_1") << "unquoted: lower-cased";
  EXPECT_EQ(fetched_cursor("FETCH NEXT IN \"C_1\"").view(), "C_1");
  EXPECT_EQ(fetched_cursor("move 1 c_10").view(), "c_10") << "not a name that contains c_1";
  EXPECT_TRUE(fetched_cursor("FETCH 10").empty());
  EXPECT_TRUE(fetched_cursor("SELECT 1 FROM c_1").empty());
  EXPECT_TRUE(fetched_cursor("").empty());
}

TEST(MayStartWith, LooksAtTheFirstWordAfterSpaces) {
  EXPECT_TRUE(may_start_with(" \n\t\f SET a = 1", {"set", "reset"}));
  EXPECT_TRUE(may_start_with("reset a", {"set", "reset"}));
  EXPECT_TRUE(may_start_with("ReSeT", {"set", "reset"}));
  EXPECT_TRUE(may_start_with("set/**/a = 1", {"set", "reset"}));
  EXPECT_TRUE(may_start_with("LISTEN\"chan\"", {"listen", "unlisten"}));
  EXPECT_TRUE(may_start_with("unlisten *", {"listen", "unlisten"}));
  // A comment may hide the word.
  EXPECT_TRUE(may_start_with("/* c */ set a = 1", {"set", "reset"}));
  EXPECT_TRUE(may_start_with("-- c\nlisten x", {"listen", "unlisten"}));
  // Words that only begin like one are other words.
  EXPECT_FALSE(may_start_with("select 1", {"set", "reset"}));
  EXPECT_FALSE(may_start_with("settings", {"set", "reset"}));
  EXPECT_FALSE(may_start_with("set_config('a', 'b', false)", {"set", "reset"}));
  EXPECT_FALSE(may_start_with("set2 x", {"set", "reset"}));
  EXPECT_FALSE(may_start_with("set$x", {"set", "reset"}));
  EXPECT_FALSE(may_start_with("set\xc3\xa9 x", {"set", "reset"}));
  EXPECT_FALSE(may_start_with("update t set a = 1", {"listen", "unlisten"}));
  EXPECT_FALSE(may_start_with("se", {"set", "reset"}));
  EXPECT_FALSE(may_start_with("   ", {"set", "reset"}));
  EXPECT_FALSE(may_start_with("", {"set", "reset"}));
}

TEST(ContainsCi, FindsTheNeedleInAnyCaseFromTheGivenOffset) {
  EXPECT_TRUE(contains_ci("SET PGVALVE.route = replica", 0, "pgvalve."));
  EXPECT_TRUE(contains_ci("x pgValve.", 2, "pgvalve."));
  EXPECT_FALSE(contains_ci("pgvalve.", 1, "pgvalve."));
  EXPECT_FALSE(contains_ci("pgvalve", 0, "pgvalve."));
  EXPECT_FALSE(contains_ci("a.b pgvalveX", 0, "pgvalve."));
  EXPECT_TRUE(contains_ci("  LiStEn ch", 0, "listen"));
  EXPECT_FALSE(contains_ci("lis ten", 0, "listen"));
  EXPECT_FALSE(contains_ci("", 0, "listen"));
}

}  // namespace
}  // namespace pgvalve::routing
