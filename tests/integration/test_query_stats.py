"""Statement statistics through the admin console: after a known workload against real
PostgreSQL, SHOW QUERIES and SHOW SLOW_QUERIES report exactly what ran."""

from __future__ import annotations

import subprocess

import psycopg
import pytest

from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
from pgcluster import wait_until


def admin(pv):
    return psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                           autocommit=True)


def rows_of(pv, command):
    with admin(pv) as a:
        cur = a.execute(command)
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def by_query(pv):
    return {r["query"]: r for r in rows_of(pv, "SHOW QUERIES")}


@pytest.fixture
def pv(pgvalve):
    return pgvalve(users=APP_AND_OPS, pool_size=4, stats={"slow_query_ms": 100})


def test_calls_rows_and_errors_per_statement_shape(pv):
    with pv.connect(prepare_threshold=None) as c:  # extended protocol, unnamed statements
        c.execute("create temp table t (device_id int, value float8)")
        for i in range(100):
            c.execute("insert into t values (%s, %s)", (i, i * 0.5))
        for i in range(10):
            c.execute("select * from t where device_id < %s", (i + 1,)).fetchall()
        for _ in range(3):
            with pytest.raises(psycopg.errors.DivisionByZero):
                c.execute("select 1 / %s", (0,))
    # Simple protocol, constants written out: one shape whatever the constant.
    for i in range(5):
        subprocess.run(["psql", pv.dsn(), "-Xqc", f"select {i} + 1"], check=True,
                       capture_output=True)
    q = by_query(pv)
    ins = q["insert into t values ($1, $2)"]
    assert (int(ins["calls"]), int(ins["rows"]), int(ins["errors"])) == (100, 100, 0)
    sel = q["select * from t where device_id < $1"]
    assert (int(sel["calls"]), int(sel["rows"])) == (10, sum(range(1, 11)))
    # PostgreSQL's normaliser numbers the constant after the statement's own parameter.
    err = q["select $2 / $1"]
    assert (int(err["calls"]), int(err["errors"])) == (3, 3)
    plus = q["select $1 + $2"]
    assert int(plus["calls"]) == 5
    for r in (ins, sel):
        assert float(r["min_ms"]) <= float(r["p50_ms"]) <= float(r["p95_ms"]) <= \
            float(r["p99_ms"]) <= float(r["max_ms"])
        assert abs(float(r["mean_ms"]) * int(r["calls"]) - float(r["total_ms"])) < 0.01 * \
            int(r["calls"])
        assert r["replica_share"] == "0.00"
        assert r["fingerprint"] and len(r["fingerprint"]) == 16
    # Named prepared statements (psycopg prepares after 0 executions here) count the same way.
    with pv.connect(prepare_threshold=0) as c:
        for i in range(20):
            c.execute("select %s::int * 2 as twice", (i,)).fetchone()
    assert int(by_query(pv)["select $1::int * $2 as twice"]["calls"]) == 20


def test_named_statements_are_counted_in_session_mode(pgvalve):
    # Session mode passes statement names to the client's own server: their executions used to
    # go uncounted once a driver named them (psycopg after prepare_threshold uses).
    pv = pgvalve(users=APP_AND_OPS, pool_size=2, mode="session")
    with pv.connect() as c:  # the default threshold: named after 5 uses
        for i in range(9):
            c.execute("select %s::int + 1 as next", (i,)).fetchone()
    with pv.connect(prepare_threshold=0) as c:
        for i in range(4):
            c.execute("select %s::int + 2 as after_next", (i,)).fetchone()
    q = by_query(pv)
    assert int(q["select $1::int + $2 as next"]["calls"]) == 9
    assert int(q["select $1::int + $2 as after_next"]["calls"]) == 4


def test_slow_statements_are_sampled_without_their_constants(pv):
    with pv.connect() as c:
        c.execute("select pg_sleep(0.2), 'secret-constant'")
        c.execute("select pg_sleep(0.01)")
    slow = rows_of(pv, "SHOW SLOW_QUERIES")
    assert len(slow) == 1, slow
    s = slow[0]
    assert s["query"].startswith("select pg_sleep($1)"), s
    assert "secret-constant" not in s["query"]
    assert float(s["duration_ms"]) >= 200
    assert (s["database"], s["user"]) == ("telemetry", "app")
    assert s["shard"] and s["host"].startswith("127.0.0.1:")
    assert s["advice"] == ""
    q = by_query(pv)
    assert int(q[s["query"]]["calls"]) == 1


def test_a_slow_sample_shows_no_comment_of_another_request(pv):
    """sqlcommenter-style comments carry each request's trace id and tenant: the text shown
    for a shape is none of theirs (the shape's first execution was another request)."""
    with pv.connect() as c:
        c.execute("/* tenant='alice',traceparent='00-aaaa-01' */ select pg_sleep(0.01)")
        c.execute("/* tenant='bob',traceparent='00-bbbb-01' */ select pg_sleep(0.2)")
    slow = rows_of(pv, "SHOW SLOW_QUERIES")
    assert [s["query"] for s in slow] == ["select pg_sleep($1)"], slow
    assert int(by_query(pv)["select pg_sleep($1)"]["calls"]) == 2


def test_shapes_that_differ_in_true_false_or_null_show_different_texts(pv):
    """true, false and null are part of a fingerprint (EXPLAIN (ANALYZE true) runs what it
    explains, false does not): each shape's row shows which it is."""
    with pv.connect() as c:
        c.execute("select 1 where true = true")
        c.execute("select 1 where true = false")
        c.execute("select 1 where true = true")
    rows = [r for r in rows_of(pv, "SHOW QUERIES") if r["query"].startswith("select $? where")]
    shown = sorted((r["query"], int(r["calls"])) for r in rows)
    assert shown == [("select $? where true = false", 1), ("select $? where true = true", 2)], rows


def test_unredacted_samples_show_constants_and_parameters_until_redaction_is_back(pgvalve):
    pv = pgvalve(users=APP_AND_OPS, pool_size=4,
                 stats={"slow_query_ms": 100, "redact_literals": False})
    with pv.connect() as c:
        c.execute("select pg_sleep(0.15), 'device-42'")
        # psycopg binds its parameters (extended protocol, text and binary formats).
        c.execute("select pg_sleep(%s), %s::text, %s::int8", (0.15, "sensor-7", 12345),
                  prepare=False)
        c.execute("select pg_sleep(0.01), 'fast'")
    slow = {r["query"]: r for r in rows_of(pv, "SHOW SLOW_QUERIES")}
    assert "select pg_sleep(0.15), 'device-42'" in slow, slow
    (bound,) = [q for q in slow if q.startswith("select pg_sleep($1), $2::text, $3::int8")]
    assert "[parameters: $1 = " in bound and "$2 = 'sensor-7'" in bound and "12345" in bound, bound
    assert not any("fast" in q for q in slow)
    # SHOW QUERIES keeps the normalised shapes.
    assert "select pg_sleep($1), $2" in by_query(pv)

    # Redaction back on (a reload): the samples kept lose their constants, new ones too.
    config = dict(pv.config)
    config["stats"] = {"slow_query_ms": 100, "redact_literals": True}
    offset = len(pv.log_text())
    pv.reload(config)
    wait_until(lambda: "reload" in pv.log_text()[offset:], 10, message="the reload")
    wait_until(lambda: not any("device-42" in r["query"] or "sensor-7" in r["query"]
                               for r in rows_of(pv, "SHOW SLOW_QUERIES")), 10,
               message="the samples redacted")
    with pv.connect() as c:
        c.execute("select pg_sleep(0.15), 'device-43'")
    assert not any("device-43" in r["query"] for r in rows_of(pv, "SHOW SLOW_QUERIES"))


def test_reset_queries_forgets_the_figures(pv):
    with pv.connect() as c:
        c.execute("select 42")
    assert by_query(pv)
    with admin(pv) as a:
        assert a.execute("RESET QUERIES").statusmessage == "RESET"
    assert by_query(pv) == {}


def test_max_fingerprints_bounds_what_is_kept(pgvalve):
    pv = pgvalve(users=APP_AND_OPS, stats={"max_fingerprints": 20})
    with pv.connect() as c:
        for i in range(200):
            c.execute(f"select {i} as c{i}")
    assert 0 < len(by_query(pv)) <= 20


@pytest.mark.parametrize("name", ["telemetry", "dashboards"])
def test_explain_slow_advises_an_index_for_a_seq_scan_on_a_large_table(pgvalve, cluster, name):
    """`name`: what clients call the database; "dashboards" is the servers' "telemetry" (dbname),
    which EXPLAIN must log in to."""
    cluster.primary.sql("drop table if exists big_readings", dbname="telemetry")
    cluster.primary.sql("create table big_readings as select g % 5000 as device_id, "
                        "random() as value from generate_series(1, 200000) g",
                        dbname="telemetry")
    cluster.primary.sql("grant select on big_readings to app", dbname="telemetry")
    cluster.primary.sql("analyze big_readings", dbname="telemetry")
    databases = {name: {"dbname": "telemetry",
                        "shards": [{"name": "s0",
                                    "primary": f"127.0.0.1:{cluster.primary.port}"}]}}
    pv = pgvalve(users=APP_AND_OPS, databases=databases,
                 stats={"slow_query_ms": 1, "explain_slow": True})
    try:
        def run(device):
            subprocess.run(["psql", pv.dsn(dbname=name), "-Xqc",
                            f"select avg(value) from big_readings where device_id = {device}"],
                           check=True, capture_output=True)

        def advice():
            run(7)  # slow: sampled, then EXPLAINed in the background within a second
            rows = [r for r in rows_of(pv, "SHOW SLOW_QUERIES") if "big_readings" in r["query"]]
            return rows and rows[0]["advice"]

        got = wait_until(advice, 20, message="EXPLAIN advice for the slow seq scan")
        assert "sequential scan of big_readings" in got, got
        assert "an index on big_readings (device_id)" in got, got
        q = [r for r in rows_of(pv, "SHOW QUERIES") if "big_readings" in r["query"]]
        assert q and "7" not in q[0]["query"]
        assert "slow_query_explained" in pv.log_text()
    finally:
        cluster.primary.sql("drop table big_readings", dbname="telemetry")



def test_explain_slow_advice_follows_what_postgresql_does(pgvalve, cluster):
    """The advised index leads with the columns compared for equality (PostgreSQL prints the
    filter `id > 5 AND grp = 7` in its own order), and a top-N sort under a LIMIT, which never
    spills, is no sort advice."""
    cluster.primary.sql("drop table if exists big_notes", dbname="telemetry")
    cluster.primary.sql("create table big_notes as select g as id, g % 100 as grp, "
                        "md5(g::text) as note from generate_series(1, 200000) g",
                        dbname="telemetry")
    cluster.primary.sql("grant select on big_notes to app", dbname="telemetry")
    cluster.primary.sql("analyze big_notes", dbname="telemetry")
    pv = pgvalve(users=APP_AND_OPS, stats={"slow_query_ms": 1, "explain_slow": True})
    try:
        def advice_of(sql):
            def explained():
                subprocess.run(["psql", pv.dsn(), "-Xqc", sql], check=True, capture_output=True)
                shown = [r for r in rows_of(pv, "SHOW QUERIES") if "big_notes" in r["query"]
                         and ("limit" in r["query"]) == ("limit" in sql)]
                if not shown:
                    return None
                for line in pv.log_text().splitlines():
                    if ("slow_query_explained" in line
                            and shown[0]["fingerprint"] in line):
                        return line
                return None
            return wait_until(explained, 20, message=f"EXPLAIN of {sql}")

        scan = advice_of("select count(*) from big_notes where id > 5 and grp = 7")
        assert "an index on big_notes (grp, id)" in scan, scan
        top = advice_of("select * from big_notes order by note limit 10")
        assert "sort of" not in top and "advice=none" in top.replace('"', ""), top
    finally:
        cluster.primary.sql("drop table big_notes", dbname="telemetry")

def big_notes(cluster, table):
    cluster.primary.sql(f"drop table if exists {table}", dbname="telemetry")
    cluster.primary.sql(f"create table {table} as select g as id, g % 100 as grp, "
                        "md5(g::text) as note from generate_series(1, 200000) g",
                        dbname="telemetry")
    cluster.primary.sql(f"grant select on {table} to app", dbname="telemetry")
    cluster.primary.sql(f"analyze {table}", dbname="telemetry")


def explained_advice(pv, sql, shape):
    """Runs `sql` until its shape (SHOW SLOW_QUERIES's normalised text `shape`) has advice:
    the advice and the shape's fingerprint."""
    def explained():
        subprocess.run(["psql", pv.dsn(), "-Xqc", sql], check=True, capture_output=True)
        rows = [r for r in rows_of(pv, "SHOW SLOW_QUERIES") if r["query"] == shape and r["advice"]]
        return rows and (rows[0]["advice"], rows[0]["fingerprint"])
    return wait_until(explained, 30, message=f"EXPLAIN advice of {sql}")


def test_explain_slow_advice_shows_no_constant_of_a_sort_key(pgvalve, cluster):
    """A spilling sort's advice is kept for its shape and shown beside every later sample of it:
    a sort key that is an expression holding a client's constant is not quoted; a column is
    named."""
    import json
    import urllib.request
    big_notes(cluster, "big_sorts")
    pv = pgvalve(users=APP_AND_OPS, stats={"slow_query_ms": 1, "explain_slow": True})
    try:
        advice, _ = explained_advice(
            pv, "select id from big_sorts order by note || 'SORTSECRET'",
            "select id from big_sorts order by note || $1")
        assert "SORTSECRET" not in advice, advice
        assert "sort of about" in advice and "an index on what it sorts by" in advice, advice
        advice, _ = explained_advice(pv, "select id from big_sorts order by note",
                                     "select id from big_sorts order by note")
        assert "sort of about" in advice and "an index on (note)" in advice, advice
        with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/status", timeout=5) as r:
            status = r.read().decode()
        assert json.loads(status)["slow_queries"]
        shown = (status + pv.log_text()
                 + " ".join(str(r) for r in rows_of(pv, "SHOW SLOW_QUERIES")))
        assert "SORTSECRET" not in shown
    finally:
        cluster.primary.sql("drop table big_sorts", dbname="telemetry")


def test_explain_slow_advice_takes_no_word_of_a_constant_for_a_column(pgvalve, cluster):
    """Words inside a filter's string constant are a client's value: the advised index names the
    column compared, not them, and they are shown nowhere."""
    big_notes(cluster, "big_filters")
    pv = pgvalve(users=APP_AND_OPS, stats={"slow_query_ms": 1, "explain_slow": True})
    try:
        advice, _ = explained_advice(
            pv, "select count(*) from big_filters where note = 'hello LEAKWORD = 1'",
            "select count(*) from big_filters where note = $1")
        assert "LEAKWORD" not in advice, advice
        assert "an index on big_filters (note) would" in advice, advice
        shown = pv.log_text() + " ".join(str(r) for r in rows_of(pv, "SHOW SLOW_QUERIES"))
        assert "LEAKWORD" not in shown
    finally:
        cluster.primary.sql("drop table big_filters", dbname="telemetry")


@pytest.mark.parametrize("redact", [True, False])
def test_a_refused_explain_logs_no_constant_of_the_statement(pgvalve, cluster, redact):
    """The EXPLAIN of a statement the server refuses is logged with its SQLSTATE; PostgreSQL's
    message, which may quote a constant (22P02 quotes the input), only when samples show the
    constants too (redact_literals: false), and never its excerpt of the statement (LINE 1)."""
    cluster.primary.sql("drop table if exists big_ids", dbname="telemetry")
    cluster.primary.sql("create table big_ids as select g as id from generate_series(1, 1000) g",
                        dbname="telemetry")
    cluster.primary.sql("grant select on big_ids to app", dbname="telemetry")
    pv = pgvalve(users=APP_AND_OPS,
                 stats={"slow_query_ms": 50, "explain_slow": True, "redact_literals": redact})
    try:
        with pv.connect() as c:
            # Slow: its shape is EXPLAINed with the text of its next execution, which fails.
            c.execute("select pg_sleep(0.1), id from big_ids where id = '5'").fetchall()
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                c.execute("select pg_sleep(0.1), id from big_ids where id = 'MyPassw0rdXYZ'")

        def logged():
            return [line for line in pv.log_text().splitlines()
                    if "slow_query_not_explained" in line]
        line = wait_until(logged, 10, message="slow_query_not_explained")[0]
        assert "the server refused EXPLAIN with SQLSTATE 22P02" in line, line
        assert "LINE" not in line, line
        if redact:
            assert "MyPassw0rdXYZ" not in pv.log_text()
        else:
            assert 'invalid input syntax for type integer: \\"MyPassw0rdXYZ\\"' in line, line
    finally:
        cluster.primary.sql("drop table big_ids", dbname="telemetry")


def stats_of(pv):
    from pgcluster import APP_DB
    return {k: int(v) for k, v in next(r for r in rows_of(pv, "SHOW STATS")
                                       if r["database"] == APP_DB).items() if k != "database"}


def stats_of_or_zero(pv):
    from pgcluster import APP_DB
    rows = [r for r in rows_of(pv, "SHOW STATS") if r["database"] == APP_DB]
    return stats_of(pv) if rows else {"total_xact_count": 0, "total_query_count": 0}


def errors_by_class(pv):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("pgvalve_errors_total{"):
            cls = line.split('sqlstate_class="', 1)[1].split('"', 1)[0]
            out[cls] = int(float(line.rsplit(" ", 1)[1]))
    return out


@pytest.mark.parametrize("portal", ["", "fetch_portal"])
def test_a_portal_read_in_chunks_is_one_call_with_every_row(pv, portal):
    """JDBC with a fetch size binds a named portal and Executes it with a row limit: as in
    pg_stat_statements the portal is one call, its time the chunks' time, and the rows of every
    chunk count (a PortalSuspended has no tag)."""
    from pgwire_ext import ExtClient, bind, execute, parse, sync
    from pgwire import query_message
    c = ExtClient.login(pv)
    try:
        before = stats_of(pv)
        c.run([query_message("begin")])
        r = c.run([parse("", "select generate_series(1, 10) as chunked"),
                   bind("", [], portal=portal)] + [execute(portal, 4)] * 3 + [sync()])
        assert r.kinds.count(b"D") == 10 and r.kinds.count(b"s") == 2, r.kinds
        c.run([query_message("commit")])
    finally:
        c.terminate()
    q = by_query(pv)["select generate_series($1, $2) as chunked"]
    assert (int(q["calls"]), int(q["rows"]), int(q["errors"])) == (1, 10, 0)
    after = stats_of(pv)
    assert after["total_query_count"] - before["total_query_count"] == 3  # begin, it, commit
    assert after["total_xact_count"] - before["total_xact_count"] == 1


def test_a_portal_left_unfinished_is_one_call_when_its_transaction_ends(pv):
    from pgwire_ext import ExtClient, bind, execute, parse, sync
    from pgwire import query_message
    c = ExtClient.login(pv)
    try:
        c.run([query_message("begin")])
        c.run([parse("", "select generate_series(1, 10) as left_open"),
               bind("", [], portal="p")] + [execute("p", 3)] * 2 + [sync()])
        c.run([query_message("commit")])
    finally:
        c.terminate()
    q = by_query(pv)["select generate_series($1, $2) as left_open"]
    assert (int(q["calls"]), int(q["rows"])) == (1, 6)


def test_a_pipeline_counts_the_failed_statement_once_and_not_the_skipped_one(pv):
    from pgwire_ext import ExtClient, bind, execute, parse, sync
    c = ExtClient.login(pv)
    try:
        before, errors_before = stats_of(pv), errors_by_class(pv)
        c.run([parse("", "select 1 / $1::int as pipelined")]
              + [bind("", [v]) + execute() for v in ("1", "0", "2")] + [sync()])
    finally:
        c.terminate()
    q = by_query(pv)["select $2 / $1::int as pipelined"]
    # The third Execute never ran: PostgreSQL skipped it after the error.
    assert (int(q["calls"]), int(q["errors"])) == (2, 1)
    assert stats_of(pv)["total_query_count"] - before["total_query_count"] == 2
    errors = errors_by_class(pv)
    assert errors.get("22", 0) - errors_before.get("22", 0) == 1
    assert "XX" not in errors, errors


def test_a_statement_cut_by_a_dying_server_is_counted_as_an_error(pv, cluster):
    """The client gets 08006 and keeps its connection; the statement counts as a call that
    ended in an error of class 08, slow when it ran past stats.slow_query_ms."""
    import threading
    errors_before = errors_by_class(pv)
    with pv.connect() as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        killer = threading.Timer(0.4, lambda: cluster.primary.psql(
            f"select pg_terminate_backend({pid})"))
        killer.start()
        with pytest.raises(psycopg.OperationalError) as e:
            c.execute("select pg_sleep(3) as cut_short")
        killer.join()
        assert e.value.sqlstate == "08006", e.value
        assert c.execute("select 1").fetchone() == (1,)
    q = by_query(pv)["select pg_sleep($1) as cut_short"]
    assert (int(q["calls"]), int(q["errors"])) == (1, 1)
    assert float(q["max_ms"]) >= 300
    assert errors_by_class(pv).get("08", 0) - errors_before.get("08", 0) == 1
    assert any(s["query"] == "select pg_sleep($1) as cut_short"
               for s in rows_of(pv, "SHOW SLOW_QUERIES"))


def test_errors_pgvalve_answers_itself_are_counted_and_begin_no_transaction(pgvalve):
    pv = pgvalve(users=APP_AND_OPS, pool_size=2, pin_session_state=False)
    before, errors_before = stats_of_or_zero(pv), errors_by_class(pv)
    with pv.connect() as c:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute("select pg_advisory_lock(1)")
        c.execute("select 1")
    after = stats_of(pv)
    assert errors_by_class(pv).get("0A", 0) - errors_before.get("0A", 0) == 1
    # The refused statement ran nothing: one transaction, the select's.
    assert after["total_xact_count"] - before["total_xact_count"] == 1


def metric_lines(pv, name):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [line for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")]


def metric_value(pv, name):
    (line,) = metric_lines(pv, name)
    return float(line.rsplit(" ", 1)[1])


def test_reads_that_fall_back_to_the_primary_count_as_run_on_the_primary(pgvalve, cluster):
    # The replica cannot be reached: reads fall back to the primary, and ran there.
    from pgcluster import APP_DB
    pv = pgvalve(users=APP_AND_OPS,
                 health={"interval_ms": 100, "timeout_ms": 500, "failures_before_down": 1},
                 databases={APP_DB: {"shards": [{
                     "name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}",
                     "replicas": ["127.0.0.1:1"]}]}})
    wait_until(lambda: any(h["host"] == "127.0.0.1" and h["port"] == "1" and h["state"] == "down"
                           for h in rows_of(pv, "SHOW HOSTS")), 10, message="replica down")
    with pv.connect() as c:
        ran = [c.execute("select pg_is_in_recovery() as fell_back").fetchone()[0]
               for _ in range(4)]
    assert ran == [False] * 4
    assert by_query(pv)["select pg_is_in_recovery() as fell_back"]["replica_share"] == "0.00"
    lines = metric_lines(pv, "pgvalve_queries_total")
    assert not any('role="replica"' in line for line in lines), lines
    assert any('role="primary"' in line and 'kind="select"' in line for line in lines), lines


def test_a_pipelined_statement_is_not_charged_the_time_of_a_slow_one_ahead(pv):
    before = metric_value(pv, "pgvalve_slow_queries_total")
    with pv.connect() as c:
        with c.pipeline():
            c.execute("select pg_sleep(0.3) as slow_ahead")
            for i in range(3):
                c.execute("select %s::int as queued_behind", (i,))
    assert metric_value(pv, "pgvalve_slow_queries_total") - before == 1
    fast = by_query(pv)["select $1::int as queued_behind"]
    assert int(fast["calls"]) == 3
    assert float(fast["max_ms"]) < 100, fast
    slow = rows_of(pv, "SHOW SLOW_QUERIES")
    assert [s["query"] for s in slow] == ["select pg_sleep($1) as slow_ahead"], slow


def test_a_slow_statement_whose_shape_went_while_it_ran_is_still_counted_slow(pgvalve):
    import threading
    import time
    pv = pgvalve(users=APP_AND_OPS, workers=1,
                 stats={"slow_query_ms": 100, "max_fingerprints": 20})

    def slow(tag):
        with pv.connect() as c:
            c.execute(f"select pg_sleep(0.5) as {tag}", prepare=False)

    before = metric_value(pv, "pgvalve_slow_queries_total")
    # New shapes evict entries while it runs ...
    t = threading.Thread(target=slow, args=("evicted_meanwhile",))
    t.start()
    time.sleep(0.15)
    with pv.connect() as c:
        for i in range(60):
            c.execute(f"select 1 as churn_{i}", prepare=False)
    t.join()
    # ... and RESET QUERIES forgets every entry while it runs.
    t = threading.Thread(target=slow, args=("reset_meanwhile",))
    t.start()
    time.sleep(0.15)
    with admin(pv) as a:
        a.execute("RESET QUERIES")
    t.join()
    assert metric_value(pv, "pgvalve_slow_queries_total") - before == 2
    assert len(rows_of(pv, "SHOW SLOW_QUERIES")) == 1, "the one after the reset"


def test_a_reload_lowering_slow_query_samples_keeps_the_newest(pgvalve):
    import copy
    pv = pgvalve(users=APP_AND_OPS, workers=1,
                 stats={"slow_query_ms": 20, "slow_query_samples": 5})
    with pv.connect() as c:
        for i in range(1, 6):
            c.execute(f"select pg_sleep(0.03), {i} as sample_{i}", prepare=False)
    cfg = copy.deepcopy(pv.config)
    cfg["stats"] = {"slow_query_ms": 20, "slow_query_samples": 2}
    pv.reload(cfg)
    wait_until(lambda: any(r["key"] == "stats.slow_query_samples" and r["value"] == "2"
                           for r in rows_of(pv, "SHOW CONFIG")), 10, message="reloaded")
    kept = [r["query"].rsplit(" ", 1)[-1] for r in rows_of(pv, "SHOW SLOW_QUERIES")]
    assert kept == ["sample_5", "sample_4"], kept


def test_shards_are_named_in_the_database_the_statement_ran_in(pgvalve, cluster):
    from pgcluster import APP_DB
    port = cluster.primary.port
    pv = pgvalve(users=APP_AND_OPS, databases={
        APP_DB: {"shards": [{"name": "s10", "primary": f"127.0.0.1:{port}"}]},
        "other": {"dbname": APP_DB, "shards": [{"name": "s1", "primary": f"127.0.0.1:{port}"}]}})
    with psycopg.connect(pv.dsn(dbname="other"), autocommit=True) as c:
        c.execute("select 42 as other_only").fetchall()
        c.execute("select 43 as in_both").fetchall()
    with pv.connect() as c:
        c.execute("select 43 as in_both").fetchall()
    q = by_query(pv)
    assert q["select $1 as other_only"]["shards"] == "s1"
    # Whole names: s1 is not taken for a part of s10.
    assert sorted(q["select $1 as in_both"]["shards"].split(",")) == ["s1", "s10"]
