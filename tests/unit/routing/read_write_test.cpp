#include "routing/read_write.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "routing/parse_tree.h"
#include "routing/read_only_functions.h"

namespace pgvalve::routing {

void PrintTo(AccessReason reason, std::ostream* os) {
  *os << access_reason_name(reason);
}

namespace {

using R = AccessReason;

// DESIGN.md's example configuration.
const std::vector<std::string> kConfig = {
    "nextval", "setval", "pg_advisory_lock", "pg_advisory_xact_lock", "pg_notify", "txid_current"};

struct Case {
  const char* sql;
  AccessReason expected;         // Read: a read; anything else: a write for that reason
  const char* detail = nullptr;  // checked when given
};

void check(const std::vector<Case>& cases,
           const std::vector<std::string>& write_functions = kConfig) {
  for (const Case& c : cases) {
    const StatementAccess a = decide_access(c.sql, write_functions);
    SCOPED_TRACE(std::string("sql: ") + c.sql + "  -> " + a.describe());
    EXPECT_EQ(a.read, c.expected == R::Read);
    EXPECT_EQ(a.reason, c.expected);
    EXPECT_EQ(a.parsed, c.expected != R::SyntaxError);
    if (c.detail != nullptr) {
      EXPECT_EQ(a.detail(), c.detail);
    }
  }
}

const std::vector<Case> kPlainSelects = {
    {"select 1", R::Read},
    {"SELECT 1;", R::Read},
    {"select 1;;", R::Read},
    {"select", R::Read},
    {"select * from t", R::Read},
    {"select a, b from t where a = 1", R::Read},
    {"select a from t where a = $1", R::Read},
    {"select * from t where id in (1, 2, 3)", R::Read},
    {"select a from t where a in ($1, $2, $3)", R::Read},
    {"select * from t where id = any($1)", R::Read},
    {"select a from t where a = ANY ($1::int[])", R::Read},
    {"select * from t limit all", R::Read},
    {"select * from t for read only", R::Read},
    {"select * from t order by a desc nulls last limit 10 offset 5", R::Read},
    {"select * from t order by a using <", R::Read},
    {"select * from t fetch first 5 rows only", R::Read},
    {"select distinct on (a) a, b from t order by a, b", R::Read},
    {"select * from only t", R::Read},
    {"select * from s.t", R::Read},
    {"select * from \"Table\" where \"Col\" = 1", R::Read},
    {"select * from \"таблица\"", R::Read},
    {"select t.* from t", R::Read},
    {"select * from t as x(a, b)", R::Read},
    {"select * from t tablesample system (10)", R::Read},
    {"SeLeCt NoW() FrOm T", R::Read},
    {"select 1 as \"NEXTVAL\"", R::Read},
    {"select nextval from t", R::Read},    // a column called nextval
    {"select t.nextval from t", R::Read},  // still a column
    {"select * from nextval", R::Read},    // a table called nextval
    {"select * from t where current_date > d", R::Read},
    {"select $1::int", R::Read},
    {"select E'\\n'", R::Read},
    {"select $$dollar$$", R::Read},
    {"select $tag$ nextval('s') $tag$", R::Read},  // a string, not a call
    {"select 'nextval(''s'')'", R::Read},
    {"select U&'\\0041'", R::Read},
    {"select 1::\"int4\"", R::Read},
    {"select a collate \"C\" from t order by a collate \"C\"", R::Read},
    {"select * from pg_stat_activity", R::Read},
    {"select * from pg_catalog.pg_class where relname = 't'", R::Read},
};

TEST(DecideAccess, PlainSelects) {
  check(kPlainSelects);
}

const std::vector<Case> kJoinsAndSubqueries = {
    {"select * from t join u on t.id = u.tid", R::Read},
    {"select * from t left join u using (id)", R::Read},
    {"select * from t right outer join u on true", R::Read},
    {"select * from t full join u on t.a = u.a", R::Read},
    {"select * from t natural join u", R::Read},
    {"select * from t cross join u", R::Read},
    {"select * from t, lateral (select * from u where u.id = t.id) x", R::Read},
    {"select exists (select 1 from t where a = 1)", R::Read},
    {"select * from t where a in (select b from u)", R::Read},
    {"select * from t where a not in (select b from u)", R::Read},
    {"select * from t where a = any (select b from u)", R::Read},
    {"select * from t where a > all (select b from u)", R::Read},
    {"select (select max(b) from u) as m", R::Read},
    {"select a from t where a = (select max(a) from t)", R::Read},
    {"select * from (select * from (select 1) a) b", R::Read},
    {"select * from t union select * from u", R::Read},
    {"select * from t union all select * from u intersect select * from v", R::Read},
    {"select * from t except select * from u", R::Read},
    {"(select 1) union (select 2) order by 1", R::Read},
    {"select * from (values (1), (2)) v(a)", R::Read},
};

TEST(DecideAccess, AStatementTooLongToParseIsAWrite) {
  std::string sql = "SELECT * FROM t WHERE id IN (1";
  while (sql.size() <= kMaxParsedStatementBytes)
    sql += ",1";
  sql += ")";
  const StatementAccess access = decide_access(sql, {});
  EXPECT_FALSE(access.parsed);
  EXPECT_FALSE(access.read);
}

TEST(DecideAccess, JoinsAndSubqueries) {
  check(kJoinsAndSubqueries);
}

const std::vector<Case> kExpressionsAndBuiltins = {
    {"select count(*) from t", R::Read},
    {"select count(distinct a) from t group by b having count(*) > 1", R::Read},
    {"select a, sum(b) over (partition by a order by c) from t", R::Read},
    {"select row_number() over w from t window w as (order by a)", R::Read},
    {"select rank() over (order by a), dense_rank() over (order by a), lag(a) over (order by a) "
     "from t",
     R::Read},
    {"select percentile_cont(0.5) within group (order by a) from t", R::Read},
    {"select array_agg(a order by b) filter (where c > 0) from t", R::Read},
    {"select string_agg(a, ',') from t", R::Read},
    {"select json_agg(t) from t", R::Read},
    {"select count(*) filter (where a) from t", R::Read},
    {"select a from t group by rollup (a, b)", R::Read},
    {"select a from t group by grouping sets ((a), (b), ())", R::Read},
    {"select a, grouping(a) from t group by cube (a)", R::Read},
    {"select jsonb_build_object('a', 1)", R::Read},
    {"select data->>'k' from t where data @> '{\"a\":1}'", R::Read},
    {"select a->'b'->>'c', a #> '{b}', a #>> '{b}' from t", R::Read},
    {"select jsonb_path_query(a, '$.b') from t", R::Read},
    {"select a ? 'k', a ?| array['k'], a ?& array['k'] from t", R::Read},
    {"select * from t where name like 'a%'", R::Read},
    {"select * from t where name ilike 'a%'", R::Read},
    {"select * from t where name not like 'a%' escape '\\'", R::Read},
    {"select * from t where name ~ '^a' and name !~* 'b'", R::Read},
    {"select * from t where name similar to 'a%'", R::Read},
    {"select a from t where a ~~ 'x%' or a !~~ 'y'", R::Read},
    {"select * from t where a between 1 and 10", R::Read},
    {"select * from t where a not between symmetric 1 and 10", R::Read},
    {"select * from t where a is distinct from b", R::Read},
    {"select * from t where a is not distinct from b", R::Read},
    {"select * from t where a is not null and b is true", R::Read},
    {"select nullif(a, 0) from t", R::Read},
    {"select coalesce(a, b, 0) from t", R::Read},
    {"select greatest(a, b), least(a, b) from t", R::Read},
    {"select case when a > 0 then 'p' else 'n' end from t", R::Read},
    {"select a::text, cast(b as int), c::numeric(10,2) from t", R::Read},
    {"select '2024-01-01'::date + interval '1 day'", R::Read},
    {"select now(), current_timestamp, current_date, localtime", R::Read},
    {"select current_user, session_user, current_schema, current_database()", R::Read},
    {"select pg_catalog.now()", R::Read},
    {"select \"now\"()", R::Read},
    {"select extract(epoch from now())", R::Read},
    {"select date_trunc('hour', ts), date_part('year', ts) from t", R::Read},
    {"select ts at time zone 'UTC' from t", R::Read},
    {"select substring(a from 2 for 3), position('x' in a), trim(both ' ' from a) from t", R::Read},
    {"select overlay(a placing 'x' from 1) from t", R::Read},
    {"select upper(a), lower(a), length(a), md5(a), concat(a, b), format('%s', a) from t", R::Read},
    {"select a || b from t", R::Read},
    {"select abs(-1), round(2.5), ceil(1.2), floor(1.2), sqrt(4), power(2, 10)", R::Read},
    {"select -a, @ a, |/ 4, ||/ 8 from t", R::Read},
    {"select a % 2, a # b, a & b, a | b, ~a, a << 1, a >> 1 from t", R::Read},
    {"select a != b, a <> b, a <= b, a >= b from t", R::Read},
    {"select 'abc' ^@ 'a'", R::Read},
    {"select point(1,2) <-> point(3,4)", R::Read},
    {"select int4range(1,5) @> 3, int4range(1,5) -|- int4range(5,7)", R::Read},
    {"select '10.0.0.1'::inet << '10.0.0.0/8'::inet", R::Read},
    {"select array[1,2] && array[2,3], '{1,2}'::int[] @> '{1}'", R::Read},
    {"select 'x' = any (array['x'])", R::Read},
    {"select a @@ to_tsquery('x') from t", R::Read},
    {"select ts_rank(to_tsvector(a), plainto_tsquery('x')) from t", R::Read},
    {"select row(1, 2) < row(1, 3)", R::Read},
    {"select 1 where (1, 2) in ((1, 2))", R::Read},
    {"select a from t where a = 1 and not b", R::Read},
    {"select a operator(pg_catalog.+) b from t", R::Read},
    {"select a from t where b is normalized", R::Read},
    {"select normalize(a) from t", R::Read},
    {"select collation for (a) from t", R::Read},
    {"select a from t where (a, b) overlaps (c, d)", R::Read},
    {"select 1 from t where xmlexists('//a' passing by ref x)", R::Read},
    {"select xmlelement(name foo, 'bar')", R::Read},
    {"select random()", R::Read},
    {"select gen_random_uuid()", R::Read},
    {"select clock_timestamp(), timeofday()", R::Read},
    {"select pg_sleep(1)", R::Read},
    {"select pg_is_in_recovery()", R::Read},  // tells which server ran it
    {"select pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn(), "
     "pg_last_xact_replay_timestamp()",
     R::Read},
    {"select pg_backend_pid(), inet_server_addr(), inet_server_port()", R::Read},
    {"select txid_current_snapshot(), pg_current_snapshot()", R::Read},
    {"select version()", R::Read},
    {"select current_setting('search_path')", R::Read},
    {"select pg_database_size(current_database())", R::Read},
    {"select pg_size_pretty(pg_total_relation_size('t'))", R::Read},
    {"select has_table_privilege('t', 'select')", R::Read},
    {"select to_char(now(), 'YYYY')", R::Read},
    {"select now() - pg_postmaster_start_time()", R::Read},
    {"select pg_catalog.pg_get_viewdef('v'::regclass)", R::Read},
    {"select lo_get(123)", R::Read},
    {"select pg_catalog.lower('A')", R::Read},
    {"select pg_catalog.sum(a) from t", R::Read},
    {"select sum(a)::float / count(*) from t", R::Read},
    {"select generate_series(1, 10)", R::Read},
    {"select * from generate_series(1, 10) g", R::Read},
    {"select * from unnest(array[1,2,3]) with ordinality", R::Read},
    {"select * from rows from (generate_series(1,2), unnest(array['a','b']))", R::Read},
    {"select * from jsonb_to_recordset('[{\"a\":1}]') as x(a int)", R::Read},
    {"select * from t, jsonb_each(t.data) e", R::Read},
    {"select * from t cross join lateral generate_series(1, t.n)", R::Read},
};

TEST(DecideAccess, ExpressionsAndBuiltins) {
  check(kExpressionsAndBuiltins);
}

const std::vector<Case> kTelemetryQueries = {
    {"select avg(value) from readings where device_id = $1 and ts > now() - interval '1 hour'",
     R::Read},
    {"select device_id, max(ts) from readings group by device_id", R::Read},
    {"select date_bin('15 minutes', ts, timestamp '2001-01-01'), avg(value) from readings "
     "group by 1 order by 1",
     R::Read},
    {"select * from readings where ts >= now() - '1 day'::interval order by ts desc limit 100",
     R::Read},
    {"select percentile_disc(0.95) within group (order by value) from readings", R::Read},
    {"select device_id, count(*), min(value), max(value) from readings "
     "where ts between $1 and $2 group by device_id having count(*) > 10",
     R::Read},
    {"select * from device_events where device_id = 42 order by ts desc limit 1", R::Read},
    {"select d.name, r.value from devices d join lateral (select value from readings r "
     "where r.device_id = d.id order by ts desc limit 1) r on true",
     R::Read},
    {"select time_bucket('5 minutes', ts), avg(value) from readings group by 1", R::UnknownFunction,
     "time_bucket"},  // an extension function: not known to be read-only
};

TEST(DecideAccess, TelemetryQueries) {
  check(kTelemetryQueries);
}

const std::vector<Case> kCtesValuesTableShow = {
    {"with x as (select 1) select * from x", R::Read},
    {"with recursive r(n) as (select 1 union all select n + 1 from r where n < 10) "
     "select * from r",
     R::Read},
    {"with x as materialized (select * from t) select * from x", R::Read},
    {"with x as not materialized (select * from t) select * from x", R::Read},
    {"with x as (select * from t), y as (select * from x) select * from y", R::Read},
    {"values (1), (2)", R::Read},
    {"values (1, 'a'), (2, 'b') order by 1", R::Read},
    {"table t", R::Read},
    {"TABLE s.t", R::Read},
    {"table t union table u", R::Read},
    {"show search_path", R::Read},
    {"show all", R::Read},
    {"SHOW TimeZone", R::Read},
    {"show transaction isolation level", R::Read},
    {"show transaction_read_only", R::ServerRole},  // pgjdbc's targetServerType=primary
    {"SHOW in_hot_standby", R::ServerRole},
};

TEST(DecideAccess, CtesValuesTableShow) {
  check(kCtesValuesTableShow);
}

const std::vector<Case> kCommentsAndHints = {
    {"/* pgvalve: replica */ select 1", R::Read},
    {"/* pgvalve: primary */ select 1", R::Read},  // hints are the router's business
    {"-- comment\nselect 1", R::Read},
    {"select 1 -- trailing", R::Read},
    {"SELECT /* inline */ 1", R::Read},
    {"/* nested /* comment */ still */ select 1", R::Read},
    {"select 1 /* ; delete from t */", R::Read},
    {"select '; delete from t'", R::Read},
    {"/* pgvalve: replica */ select nextval('s')", R::WriteFunction, "nextval"},
};

TEST(DecideAccess, CommentsAndHints) {
  check(kCommentsAndHints);
}

const std::vector<Case> kExplain = {
    {"explain select * from t", R::Read},
    {"explain (costs off) select * from t", R::Read},
    {"explain verbose select * from t", R::Read},
    {"explain (format json) select 1", R::Read},
    {"explain analyze select * from t", R::Read},
    {"explain (analyze, buffers) select * from t", R::Read},
    {"explain analyze values (1)", R::Read},
    {"explain analyze with x as (select 1) select * from x", R::Read},
    // Without ANALYZE nothing runs: the plan of a write is read-only work.
    {"explain insert into t values (1)", R::Read},
    {"explain update t set a = 1", R::Read},
    {"explain delete from t", R::Read},
    {"explain merge into t using u on t.id = u.id when matched then delete", R::Read},
    {"explain select nextval('s')", R::Read},
    {"explain select * from t for update", R::Read},
    {"explain with d as (delete from t returning *) select * from d", R::Read},
    {"explain analyze insert into t values (1)", R::ExplainAnalyzeWrite, "INSERT"},
    {"explain analyze update t set a = 1", R::ExplainAnalyzeWrite, "UPDATE"},
    {"explain analyze delete from t", R::ExplainAnalyzeWrite, "DELETE"},
    {"explain (analyze) merge into t using u on t.id = u.id when matched then update set a = 1",
     R::ExplainAnalyzeWrite, "MERGE"},
    {"explain (analyze true) insert into t values (1)", R::ExplainAnalyzeWrite},
    {"explain (verbose, analyze on) insert into t values (1)", R::ExplainAnalyzeWrite},
    // Any ANALYZE option counts: its argument is a literal the fingerprint does not see.
    {"explain (analyze false) insert into t values (1)", R::ExplainAnalyzeWrite},
    {"explain (analyze 'off') insert into t values (1)", R::ExplainAnalyzeWrite},
    {"explain analyze select nextval('s')", R::WriteFunction, "nextval"},
    {"explain analyze select myfunc()", R::UnknownFunction, "myfunc"},
    {"explain analyze select * from t for update", R::LockingClause, "FOR UPDATE"},
    {"explain analyze select * into t2 from t", R::SelectInto},
    {"explain analyze with d as (delete from t returning *) select * from d", R::WritableCte,
     "DELETE"},
    {"explain execute p", R::NotRead, "ExecuteStmt"},
    {"explain analyze execute p(1)", R::NotRead, "ExecuteStmt"},
    {"explain create table t2 as select 1", R::NotRead, "CreateTableAsStmt"},
    {"explain declare c cursor for select 1", R::NotRead, "DeclareCursorStmt"},
};

TEST(DecideAccess, Explain) {
  check(kExplain);
}

const std::vector<Case> kCopy = {
    {"copy t to stdout", R::Read},
    {"copy t (a, b) to stdout with (format csv)", R::Read},
    {"COPY s.t TO STDOUT (FORMAT binary)", R::Read},
    {"copy (select * from t) to stdout", R::Read},
    {"copy (select * from t where a > 1) to stdout (format csv, header)", R::Read},
    {"copy (values (1)) to stdout", R::Read},
    {"copy (select nextval('s')) to stdout", R::WriteFunction, "nextval"},
    {"copy (select * from t for update) to stdout", R::LockingClause, "FOR UPDATE"},
    {"copy (with d as (delete from t returning *) select * from d) to stdout", R::WritableCte},
    {"copy (insert into t values (1) returning *) to stdout", R::DataModifying, "INSERT"},
    {"copy (delete from t returning *) to stdout", R::DataModifying, "DELETE"},
    {"copy (update t set a = 1 returning *) to stdout", R::DataModifying, "UPDATE"},
    {"copy t from stdin", R::CopyFrom},
    {"copy t (a) from stdin with (format csv)", R::CopyFrom},
    {"copy t from '/tmp/x'", R::CopyFrom},
    {"copy t from program 'cat /tmp/x'", R::CopyFrom},
    {"copy t to '/tmp/x'", R::CopyToFile},
    {"copy t to program 'gzip > /tmp/x'", R::CopyToFile},
    {"copy (select 1) to '/tmp/x'", R::CopyToFile},
};

TEST(DecideAccess, Copy) {
  check(kCopy);
}

const std::vector<Case> kLockingClauses = {
    {"select * from t for update", R::LockingClause, "FOR UPDATE"},
    {"select * from t for share", R::LockingClause, "FOR SHARE"},
    {"select * from t for no key update", R::LockingClause, "FOR NO KEY UPDATE"},
    {"select * from t for key share", R::LockingClause, "FOR KEY SHARE"},
    {"SELECT * FROM t FOR UPDATE NOWAIT", R::LockingClause},
    {"select * from t for update skip locked", R::LockingClause},
    {"select * from t for update of t", R::LockingClause},
    {"select * from t join u on true for share of u for update of t", R::LockingClause},
    {"select * from t limit 1 for update", R::LockingClause},
    {"select * from (select * from t for update) x", R::LockingClause},
    {"select * from t where a in (select a from u for share)", R::LockingClause, "FOR SHARE"},
    {"select * from t where exists (select 1 from u for key share)", R::LockingClause},
    {"with x as (select * from t for update) select * from x", R::LockingClause},
    {"with x as (select * from (select 1 for no key update) y) select * from x", R::LockingClause},
    {"select (select a from u for update)", R::LockingClause},
    {"select * from t union (select * from u for update)", R::LockingClause},
    {"select * from t, lateral (select * from u for share) x", R::LockingClause},
    {"values (1) for update", R::LockingClause},
};

TEST(DecideAccess, LockingClauses) {
  check(kLockingClauses);
}

const std::vector<Case> kSelectInto = {
    {"select * into t2 from t", R::SelectInto},
    {"select 1 into temp t2", R::SelectInto},
    {"select * into unlogged t2 from t", R::SelectInto},
    {"select a, b into table t2 from t where a > 1", R::SelectInto},
    {"with x as (select 1) select * into t2 from x", R::SelectInto},
    {"create table t2 as select * from t", R::NotRead, "CreateTableAsStmt"},
};

TEST(DecideAccess, SelectInto) {
  check(kSelectInto);
}

const std::vector<Case> kWritableCtes = {
    {"with d as (delete from t returning *) select * from d", R::WritableCte, "DELETE"},
    {"with i as (insert into t values (1) returning id) select id from i", R::WritableCte,
     "INSERT"},
    {"with u as (update t set a = 1 returning *) select count(*) from u", R::WritableCte, "UPDATE"},
    {"with x as (select 1), d as (delete from t) select * from x", R::WritableCte},
    {"with recursive r as (select 1), i as (insert into log values (1)) select * from r",
     R::WritableCte},
    {"select * from (with d as (delete from t returning *) select * from d) x", R::WritableCte},
    {"with r as (select 1) insert into t select * from r", R::DataModifying, "INSERT"},
    {"with x as (select 1) update t set a = (select * from x)", R::DataModifying, "UPDATE"},
    {"with d as (delete from t returning *) insert into log select * from d", R::DataModifying},
};

TEST(DecideAccess, WritableCtes) {
  check(kWritableCtes);
}

const std::vector<Case> kWriteFunctionCalls = {
    {"select nextval('s')", R::WriteFunction, "nextval"},
    {"SELECT NEXTVAL('s')", R::WriteFunction, "nextval"},
    {"select pg_catalog.nextval('s')", R::WriteFunction, "pg_catalog.nextval"},
    {"select \"nextval\"('s')", R::WriteFunction, "nextval"},
    // Quoted upper case is another function ("NEXTVAL", not nextval); write_functions entries
    // match case-insensitively, so it is still a write.
    {"select \"NEXTVAL\"('s')", R::WriteFunction, "NEXTVAL"},
    {"select setval('s', 1)", R::WriteFunction, "setval"},
    {"select setval('s', 1, false)", R::WriteFunction},
    {"select pg_advisory_lock(1)", R::WriteFunction, "pg_advisory_lock"},
    {"select pg_advisory_xact_lock(1)", R::WriteFunction, "pg_advisory_xact_lock"},
    {"select \"PG_NOTIFY\"('c', 'p')", R::WriteFunction, "PG_NOTIFY"},
    {"select txid_current()", R::WriteFunction, "txid_current"},
    {"select * from t where id = nextval('s')", R::WriteFunction, "nextval"},
    {"select x from t where id = nextval('s')", R::WriteFunction},
    {"select * from t where id in (select nextval('s'))", R::WriteFunction},
    {"select * from t where exists (select 1 where nextval('s') > 0)", R::WriteFunction},
    {"select * from nextval('s')", R::WriteFunction},
    {"select * from t, lateral nextval('s') x", R::WriteFunction},
    {"select * from t join lateral (select nextval('s')) x on true", R::WriteFunction},
    {"select * from rows from (generate_series(1, 2), nextval('s'))", R::WriteFunction},
    {"select coalesce(a, nextval('s')) from t", R::WriteFunction},
    {"select abs(nextval('s'))", R::WriteFunction},
    {"select lower(upper(abs(nextval('s'))::text))", R::WriteFunction},
    {"select sum(nextval('s')) over () from t", R::WriteFunction},
    {"select sum(a) over (partition by nextval('s')) from t", R::WriteFunction},
    {"select count(*) filter (where nextval('s') > 0) from t", R::WriteFunction},
    {"select array_agg(a order by nextval('s')) from t", R::WriteFunction},
    {"select * from t order by nextval('s')", R::WriteFunction},
    {"select * from t group by nextval('s')", R::WriteFunction},
    {"select a from t group by a having max(b) > nextval('s')", R::WriteFunction},
    {"select * from t limit nextval('s')", R::WriteFunction},
    {"select * from t offset nextval('s')", R::WriteFunction},
    {"with x as (select nextval('s')) select * from x", R::WriteFunction},
    {"with recursive r(n) as (select 1 union all select nextval('s') from r) select * from r",
     R::WriteFunction},
    {"select (select nextval('s'))", R::WriteFunction},
    {"select exists(select setval('s', 1))", R::WriteFunction, "setval"},
    {"select case when a then nextval('s') end from t", R::WriteFunction},
    {"select case nextval('s') when 1 then 'a' end", R::WriteFunction},
    {"select nextval('s')::int", R::WriteFunction},
    {"select cast(nextval('s') as text)", R::WriteFunction},
    {"select array[nextval('s')]", R::WriteFunction},
    {"select row(nextval('s'))", R::WriteFunction},
    {"select greatest(1, nextval('s'))", R::WriteFunction},
    {"select nullif(nextval('s'), 0)", R::WriteFunction},
    {"select * from t where a between 1 and nextval('s')", R::WriteFunction},
    {"select * from t where a = any (array[nextval('s')])", R::WriteFunction},
    {"select * from t join u on t.a = nextval('s')", R::WriteFunction},
    {"select 1 union select nextval('s')", R::WriteFunction},
    {"values (nextval('s'))", R::WriteFunction},
    {"values (1), (nextval('s'))", R::WriteFunction},
    {"select pg_advisory_lock(1), pg_notify('c', 'p')", R::WriteFunction},
};

// pg_notify() writes no table but cannot run on a hot standby: a reason of its own, which lets a
// sharded database send it from one shard. Anything else that writes still wins.
const std::vector<Case> kNotifications = {
    {"select pg_notify('c', 'p')", R::Notify, "pg_notify"},
    {"select pg_catalog.pg_notify('c', 'p')", R::Notify, "pg_notify"},
    {"select pg_notify('c', name) from device_types where id = 1", R::Notify, "pg_notify"},
    {"select pg_notify('c', 'p'), nextval('s')", R::WriteFunction, "nextval"},
    {"select pg_notify('c', 'p') from t for update", R::LockingClause},
    {"with x as (delete from t returning id) select pg_notify('c', 'p') from x", R::WritableCte},
    {"select app.pg_notify('c', 'p')", R::UnknownFunction, "app.pg_notify"},
};

TEST(DecideAccess, NotificationsAreNotReadsButWriteNoTable) {
  check(kNotifications);
}

TEST(DecideAccess, WriteFunctions) {
  check(kWriteFunctionCalls);
}

const std::vector<Case> kFunctionsNotKnownReadOnly = {
    // Built-ins that write or cannot run on a standby are not in the read-only table, whatever
    // write_functions says.
    {"select currval('s')", R::UnknownFunction, "currval"},
    {"select lastval()", R::UnknownFunction, "lastval"},
    {"select pg_try_advisory_lock(1)", R::UnknownFunction, "pg_try_advisory_lock"},
    {"select pg_advisory_unlock(1)", R::UnknownFunction, "pg_advisory_unlock"},
    {"select pg_advisory_lock_shared(1)", R::UnknownFunction},
    {"select pg_advisory_unlock_all()", R::UnknownFunction},
    {"select pg_current_xact_id()", R::UnknownFunction, "pg_current_xact_id"},
    {"select set_config('a', 'b', false)", R::UnknownFunction, "set_config"},
    {"select pg_current_wal_lsn()", R::UnknownFunction, "pg_current_wal_lsn"},
    {"select pg_current_wal_insert_lsn()", R::UnknownFunction},
    {"select pg_walfile_name('0/0')", R::UnknownFunction, "pg_walfile_name"},
    {"select pg_promote()", R::UnknownFunction, "pg_promote"},
    {"select pg_switch_wal()", R::UnknownFunction},
    {"select pg_terminate_backend(1)", R::UnknownFunction},
    {"select pg_cancel_backend(1)", R::UnknownFunction},
    {"select pg_reload_conf()", R::UnknownFunction},
    {"select lo_import('/tmp/x')", R::UnknownFunction, "lo_import"},
    {"select lo_unlink(1)", R::UnknownFunction},
    {"select lo_create(0)", R::UnknownFunction},
    {"select lo_put(1, 0, 'x')", R::UnknownFunction},
    {"select pg_create_restore_point('x')", R::UnknownFunction},
    {"select query_to_xml('delete from t', true, true, '')", R::UnknownFunction},
    {"select setseed(0.5)", R::UnknownFunction},
    {"select pg_stat_reset()", R::UnknownFunction},
    {"select pg_export_snapshot()", R::UnknownFunction},
    {"select pg_logical_emit_message(true, 'p', 'x')", R::UnknownFunction},
    {"select pg_create_physical_replication_slot('s')", R::UnknownFunction},
    // User-defined and schema-qualified functions.
    {"select myfunc()", R::UnknownFunction, "myfunc"},
    {"select MyFunc(1)", R::UnknownFunction, "myfunc"},
    {"select myschema.f()", R::UnknownFunction, "myschema.f"},
    {"select public.now()", R::UnknownFunction, "public.now"},
    {"select \"NOW\"()", R::UnknownFunction, "NOW"},
    {"select \"PG_CATALOG\".now()", R::UnknownFunction, "PG_CATALOG.now"},
    {"select db.pg_catalog.now()", R::UnknownFunction, "db.pg_catalog.now"},
    {"select pg_catalog.myfunc()", R::UnknownFunction, "pg_catalog.myfunc"},
    {"select * from myfunc()", R::UnknownFunction},
    {"select * from t where a = myfunc(b)", R::UnknownFunction},
    {"select myagg(a) from t", R::UnknownFunction, "myagg"},
    {"select my_window() over () from t", R::UnknownFunction},
    {"select lower(myfunc(a)) from t", R::UnknownFunction},
    {"select * from t join lateral myfunc(t.a) on true", R::UnknownFunction},
    {"with x as (select myfunc()) select 1", R::UnknownFunction},
    {"select * from t where a in (select s.f(b) from u)", R::UnknownFunction, "s.f"},
    {"select * from t order by myfunc(a)", R::UnknownFunction},
};

TEST(DecideAccess, FunctionsNotKnownReadOnly) {
  check(kFunctionsNotKnownReadOnly);
}

const std::vector<Case> kOperators = {
    {"select a === b from t", R::UnknownOperator, "==="},
    {"select a operator(myschema.+) b from t", R::UnknownOperator, "myschema.+"},
    {"select * from t where a <=> b", R::UnknownOperator, "<=>"},
    {"select * from t order by a <#> '[1,2]'", R::UnknownOperator},
    {"select * from t order by a using <<<", R::UnknownOperator, "<<<"},
    {"select * from t where a === any (select b from u)", R::UnknownOperator},
    {"select * from t where a === any (array[1])", R::UnknownOperator},
    {"select * from t where a in (1, 2) and b ==> 'x'", R::UnknownOperator},
};

TEST(DecideAccess, Operators) {
  check(kOperators);
}

const std::vector<Case> kOtherStatements = {
    {"insert into t values (1)", R::DataModifying, "INSERT"},
    {"insert into t select * from u", R::DataModifying},
    {"insert into t values (1) on conflict do nothing", R::DataModifying},
    {"insert into t values (1) returning *", R::DataModifying},
    {"update t set a = 1 where b = 2", R::DataModifying, "UPDATE"},
    {"delete from t where a = 1", R::DataModifying, "DELETE"},
    {"merge into t using u on t.id = u.id when matched then update set a = u.a", R::DataModifying,
     "MERGE"},
    {"create table t (a int)", R::NotRead, "CreateStmt"},
    {"create temp table t (a int)", R::NotRead},
    {"create index on t (a)", R::NotRead, "IndexStmt"},
    {"create view v as select 1", R::NotRead, "ViewStmt"},
    {"create materialized view mv as select 1", R::NotRead},
    {"refresh materialized view mv", R::NotRead},
    {"alter table t add column b int", R::NotRead, "AlterTableStmt"},
    {"drop table t", R::NotRead, "DropStmt"},
    {"truncate t", R::NotRead, "TruncateStmt"},
    {"comment on table t is 'x'", R::NotRead},
    {"grant select on t to u", R::NotRead},
    {"revoke select on t from u", R::NotRead},
    {"vacuum t", R::NotRead},
    {"analyze t", R::NotRead},
    {"cluster t", R::NotRead},
    {"reindex table t", R::NotRead},
    {"lock table t", R::NotRead, "LockStmt"},
    {"lock table t in access share mode", R::NotRead},
    {"checkpoint", R::NotRead},
    {"create extension x", R::NotRead},
    {"create function f() returns int as 'select 1' language sql", R::NotRead},
    {"alter system set work_mem = '1MB'", R::NotRead},
    {"begin", R::NotRead, "TransactionStmt"},
    {"begin read only", R::NotRead, "TransactionStmt"},
    {"start transaction isolation level serializable", R::NotRead},
    {"commit", R::NotRead},
    {"rollback", R::NotRead},
    {"savepoint s", R::NotRead},
    {"release savepoint s", R::NotRead},
    {"rollback to savepoint s", R::NotRead},
    {"prepare transaction 'x'", R::NotRead},
    {"commit prepared 'x'", R::NotRead},
    {"set search_path = public", R::NotRead, "VariableSetStmt"},
    {"set local work_mem = '1MB'", R::NotRead},
    {"set transaction read only", R::NotRead},
    {"set session characteristics as transaction read only", R::NotRead},
    {"set pgvalve.route = replica", R::NotRead},
    {"reset all", R::NotRead},
    {"discard all", R::NotRead, "DiscardStmt"},
    {"listen c", R::NotRead, "ListenStmt"},
    {"unlisten *", R::NotRead},
    {"notify c, 'x'", R::NotRead, "NotifyStmt"},
    {"prepare p as select 1", R::NotRead, "PrepareStmt"},
    {"execute p", R::NotRead, "ExecuteStmt"},
    {"deallocate p", R::NotRead},
    {"declare c cursor for select 1", R::NotRead, "DeclareCursorStmt"},
    {"fetch 10 from c", R::NotRead},
    {"close c", R::NotRead},
    {"move next in c", R::NotRead},
    {"do $$ begin end $$", R::DoBlock},
    {"do language plpgsql $$ begin perform 1; end $$", R::DoBlock},
    {"call p()", R::Call},
    {"call myschema.p(1)", R::Call},
};

TEST(DecideAccess, OtherStatements) {
  check(kOtherStatements);
}

const std::vector<Case> kMultipleAndEmpty = {
    {"select 1; select 2", R::MultipleStatements},
    {"select 1; insert into t values (1)", R::MultipleStatements},
    {"begin; select 1; commit", R::MultipleStatements},
    {"show all; show all", R::MultipleStatements},
    {"", R::Empty},
    {"   ", R::Empty},
    {";", R::Empty},
    {"/* only a comment */", R::Empty},
    {"-- just a comment", R::Empty},
};

TEST(DecideAccess, MultipleAndEmpty) {
  check(kMultipleAndEmpty);
}

const std::vector<Case> kSyntaxErrors = {
    {"selec 1", R::SyntaxError},
    {"select from where", R::SyntaxError},
    {"select (1", R::SyntaxError},
    {"select 'unterminated", R::SyntaxError},
    {"select * from t where", R::SyntaxError},
    {"insert into", R::SyntaxError},
    {"garbage text $$$", R::SyntaxError},
    {"select 1 +", R::SyntaxError},
    {")", R::SyntaxError},
    {"select U&'\\zzzz'", R::SyntaxError},
    {"select 1; selec 2", R::SyntaxError},
    {"select * from t for update for", R::SyntaxError},
};

TEST(DecideAccess, SyntaxErrors) {
  check(kSyntaxErrors);
  // libpg_query reads a C string: what follows a NUL would go unseen.
  const std::string with_nul("select 1\0; delete from t", 25);
  const StatementAccess a = decide_access(with_nul, kConfig);
  EXPECT_FALSE(a.parsed);
  EXPECT_FALSE(a.read);
}

TEST(DecideAccess, WriteFunctionsConfiguration) {
  const std::vector<std::string> none;
  // Without the list, nextval is still not known to be read-only.
  EXPECT_EQ(decide_access("select nextval('s')", none).reason, R::UnknownFunction);
  EXPECT_TRUE(decide_access("select now()", none).read);
  // Entries can name built-ins (any case, pg_catalog-qualified or not) and other functions.
  const std::vector<std::string> custom = {"NOW", "pg_catalog.Random", "myschema.f"};
  EXPECT_EQ(decide_access("select now()", custom).reason, R::WriteFunction);
  EXPECT_EQ(decide_access("select pg_catalog.random()", custom).reason, R::WriteFunction);
  EXPECT_EQ(decide_access("select MySchema.F()", custom).reason, R::WriteFunction);
  // Quoted "MySchema" is another schema, unknown anyway.
  EXPECT_FALSE(decide_access("select \"MySchema\".f()", custom).read);
}

TEST(DecideAccess, Describe) {
  EXPECT_EQ(decide_access("select 1", kConfig).describe(), "read");
  EXPECT_EQ(decide_access("select nextval('s')", kConfig).describe(), "write function nextval");
  EXPECT_EQ(decide_access("select myfunc()", kConfig).describe(), "unknown function myfunc");
  EXPECT_EQ(decide_access("select 1 for update", kConfig).describe(), "locking clause FOR UPDATE");
  EXPECT_EQ(decide_access("do $$ begin end $$", kConfig).describe(), "DO block");
  EXPECT_EQ(decide_access("selec", kConfig).describe(), "syntax error at or near \"selec\"");
  // The detail is cut to its capacity, at a character boundary.
  const std::string long_name =
      "select " + std::string(40, 'x') + std::string(20, 'y') + "\xc3\xa9\xc3\xa9" + "()";
  const StatementAccess a = decide_access(long_name, kConfig);
  EXPECT_EQ(a.reason, R::UnknownFunction);
  EXPECT_EQ(a.detail(), std::string(40, 'x') + std::string(20, 'y') + "\xc3\xa9");
}

TEST(DecideAccess, AccessIsSmallAndCopyable) {
  static_assert(std::is_trivially_copyable_v<StatementAccess>);
  static_assert(sizeof(StatementAccess) <= 72);
}

TEST(ReadOnlyBuiltins, Table) {
  EXPECT_GT(read_only_builtin_count(), 2000u);
  for (const char* name :
       {"now", "abs", "count", "avg", "row_number", "lower", "jsonb_set", "random", "pg_sleep",
        "pg_is_in_recovery", "pg_last_wal_replay_lsn", "txid_current_snapshot", "pg_backend_pid",
        "extract", "timezone", "similar_to_escape", "like_escape", "btrim", "xmlexists"}) {
    EXPECT_TRUE(is_read_only_builtin(name)) << name;
  }
  for (const char* name :
       {"nextval", "setval", "currval", "lastval", "txid_current", "pg_current_xact_id",
        "pg_advisory_lock", "pg_try_advisory_xact_lock", "set_config", "pg_notify",
        "pg_current_wal_lsn", "pg_promote", "lo_import", "lo_unlink", "NOW", "", "zzz", "myfunc"}) {
    EXPECT_FALSE(is_read_only_builtin(name)) << name;
  }
  for (const char* op : {"=", "<>", "~~", "->>", "@>", "||", "&&", "<->", "^@"}) {
    EXPECT_TRUE(is_read_only_builtin_operator(op)) << op;
  }
  for (const char* op : {"!=", "===", "<=>", ""}) {
    EXPECT_FALSE(is_read_only_builtin_operator(op)) << op;
  }
}

// Robustness: nothing a client sends crashes the parse or the walk.
TEST(DecideAccessRobustness, DeepNesting) {
  const std::string parens = "select " + std::string(10000, '(') + "1" + std::string(10000, ')');
  StatementAccess a = decide_access(parens, kConfig);
  EXPECT_FALSE(a.read);  // bison's stack runs out: a syntax error

  std::string calls = "select ";
  for (int i = 0; i < 10000; ++i)
    calls += "abs(";
  calls += "1" + std::string(10000, ')');
  EXPECT_FALSE(decide_access(calls, kConfig).read);

  // As deep as the grammar goes: the walk is iterative, so this is still proven a read.
  std::string subqueries = "select ";
  for (int i = 0; i < 2000; ++i)
    subqueries += "(select ";
  subqueries += "1" + std::string(2000, ')');
  a = decide_access(subqueries, kConfig);
  EXPECT_TRUE(a.parsed);
  EXPECT_TRUE(a.read) << a.describe();
  std::string deep_write = subqueries;
  deep_write.replace(deep_write.find('1'), 1, "nextval('s')");
  EXPECT_EQ(decide_access(deep_write, kConfig).reason, R::WriteFunction);
}

TEST(DecideAccessRobustness, HugeStatements) {
  std::string wide = "select 1";
  for (int i = 0; i < 80000; ++i)
    wide += ", 1";
  ASSERT_LE(wide.size(), kMaxParsedStatementBytes);
  EXPECT_TRUE(decide_access(wide, kConfig).read);
  wide += ", nextval('s')";
  EXPECT_FALSE(decide_access(wide, kConfig).read);

  std::string many = "select 1";
  for (int i = 0; i < 2000; ++i)
    many += "; select 1";
  EXPECT_EQ(decide_access(many, kConfig).reason, R::MultipleStatements);

  // Longer than pgvalve parses: the primary takes it.
  const std::string long_literal = "select '" + std::string(1 << 20, 'x') + "'";
  EXPECT_FALSE(decide_access(long_literal, kConfig).read);
}

TEST(DecideAccessRobustness, Garbage) {
  // Deterministic pseudo-random bytes, SQL-ish tokens and their mixtures.
  std::uint64_t state = 0x9E3779B97F4A7C15ULL;
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  static constexpr const char* kTokens[] = {
      "select", "from",   "(",  ")",  "'",       "\"",   "$$", "$1",     "nextval", "for",
      "update", "with",   "as", "/*", "*/",      "--",   ";",  ",",      "::",      "E'\\",
      "\n",     "values", "[",  "]",  "explain", "copy", "to", "stdout", "\xff",    "\xc3"};
  int parsed = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string sql;
    const std::size_t length = next() % 64;
    for (std::size_t j = 0; j < length; ++j) {
      if (i % 2 == 0) {
        sql.push_back(static_cast<char>(next() % 255 + 1));
      } else {
        sql += kTokens[next() % std::size(kTokens)];
        sql.push_back(' ');
      }
    }
    const StatementAccess a = decide_access(sql, kConfig);
    if (a.parsed) ++parsed;
    EXPECT_TRUE(!a.read || a.parsed);
  }
  EXPECT_GT(parsed, 0);
}

TEST(DecideAccess, TableSize) {
  std::size_t statements = 0;
  for (const std::vector<Case>* table :
       {&kPlainSelects, &kJoinsAndSubqueries, &kExpressionsAndBuiltins, &kTelemetryQueries,
        &kCtesValuesTableShow, &kCommentsAndHints, &kExplain, &kCopy, &kLockingClauses,
        &kSelectInto, &kWritableCtes, &kWriteFunctionCalls, &kFunctionsNotKnownReadOnly,
        &kOperators, &kOtherStatements, &kMultipleAndEmpty, &kSyntaxErrors})
    statements += table->size();
  std::printf("[ read_write ] %zu statements in the tables\n", statements);
  EXPECT_GT(statements, 300u);
}

// Reads of the running backend's own state may run on a replica, but there they tell about
// another backend than a session-mode client's own (StatementAccess::own_backend).
TEST(DecideAccess, ReadsOfTheRunningBackendsOwnStateAreMarked) {
  for (const char* sql :
       {"select pg_backend_pid()", "select pg_catalog.pg_listening_channels()",
        "select name from pg_cursors", "select name from pg_catalog.pg_prepared_statements",
        "select * from pg_backend_memory_contexts", "select pg_my_temp_schema()",
        "select pg_is_other_temp_schema(99)",
        "select count(*) from pg_stat_activity where pid = pg_backend_pid()",
        "with x as (select 1) select name from x, pg_cursors"}) {
    const StatementAccess a = decide_access(sql, kConfig);
    EXPECT_TRUE(a.read) << sql;
    EXPECT_TRUE(a.own_backend) << sql;
  }
  for (const char* sql : {"select 1", "select * from pg_stat_activity",
                          "select * from other.pg_cursors", "select now()"}) {
    const StatementAccess a = decide_access(sql, kConfig);
    EXPECT_TRUE(a.read) << sql;
    EXPECT_FALSE(a.own_backend) << sql;
  }
}

}  // namespace
}  // namespace pgvalve::routing
