"""Session state in transaction mode (DESIGN §4.2, issue 3): what a client SETs outside a
transaction is remembered and applied wherever it lands; RESET / RESET ALL / DISCARD ALL
forget it; SET LOCAL does not leak; startup options apply on every server; SHOW answers with
the client's own state.

Two server connections (pool_size 2, max_overflow 0, everything on the primary). A "bouncer"
client holds one server in an open transaction while the client under test runs, so over the
rounds the client is served by both servers; each test asserts it saw two backend pids."""

import psycopg
import pytest

from pgcluster import APP_DB

ROUNDS = 6
DEFAULT_SEARCH_PATH = '"$user", public'


@pytest.fixture(scope="module")
def schemas(cluster):
    for s in ("s_a", "s_b"):
        cluster.primary.sql(f"drop schema if exists {s} cascade; create schema {s} "
                            f"authorization app; create table {s}.marker(v text); "
                            f"insert into {s}.marker values ('{s}'); "
                            f"alter table {s}.marker owner to app", dbname=APP_DB)
    return ("s_a", "s_b")


@pytest.fixture
def pv(pgvalve):
    return pgvalve(mode="transaction", pool_size=2, max_overflow=0, checkout_timeout_ms=10000)


def connect(pv, **params):
    # no server-side prepared statements here: this module is about session settings
    return psycopg.connect(pv.dsn(**params), autocommit=True, prepare_threshold=None)


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def server_default(cluster, setting):
    return cluster.primary.scalar(f"show {setting}", dbname=APP_DB)


class Bouncer:
    """Two other clients that, each round, take both servers in open transactions and then
    give back one of them: the one the clients under test did not use in the round before.
    So the clients under test run every round on the other server than the round before."""

    def __init__(self, pv):
        self.conns = [connect(pv), connect(pv)]

    def rounds(self, n=ROUNDS):
        last_free = None
        for i in range(n):
            pids = []
            for c in self.conns:
                c.execute("BEGIN")
                pids.append(one(c, "select pg_backend_pid()"))
            assert pids[0] != pids[1]
            free = 0 if pids[0] != last_free else 1
            self.conns[free].execute("COMMIT")
            try:
                yield i, pids[1 - free]
            finally:
                self.conns[1 - free].execute("COMMIT")
            last_free = pids[free]

    def close(self):
        for c in self.conns:
            c.close()


def run_rounds(pv, clients, check):
    """For each round and client: check(conn, round). Asserts that each client was served by
    both servers over the rounds."""
    bouncer = Bouncer(pv)
    seen = {id(c): set() for c in clients}
    try:
        for i, held in bouncer.rounds():
            for c in clients:
                pid = one(c, "select pg_backend_pid()")
                assert pid != held
                seen[id(c)].add(pid)
                check(c, i)
    finally:
        bouncer.close()
    for c in clients:
        assert len(seen[id(c)]) == 2, f"client was served by {seen[id(c)]}, expected 2 servers"
    return seen


def test_set_timezone_survives_another_server(pv, cluster):
    default_tz = server_default(cluster, "TimeZone")
    a, b = connect(pv), connect(pv)
    try:
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        b.execute("SET TimeZone TO 'America/New_York'")
        plain = connect(pv)

        def check(c, i):
            if c is a:
                assert one(c, "show TimeZone") == "Asia/Tokyo"
                assert one(c, "select now()::text").endswith("+09")
                assert c.info.parameter_status("TimeZone") == "Asia/Tokyo"
            elif c is b:
                assert one(c, "show TimeZone") == "America/New_York"
                assert one(c, "select current_setting('TimeZone')") == "America/New_York"
            else:
                assert one(c, "show TimeZone") == default_tz
                assert c.info.parameter_status("TimeZone") == default_tz

        run_rounds(pv, [a, b, plain], check)
        # inside explicit transactions too
        with a.transaction():
            assert one(a, "show TimeZone") == "Asia/Tokyo"
        plain.close()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_set_session_characteristics_stays_the_clients(pgvalve, cluster, mode):
    """pgjdbc's setReadOnly(true) with readOnlyMode=always sends SET SESSION CHARACTERISTICS AS
    TRANSACTION READ ONLY: the application's guard against writes. It was undone before the
    client's next statement (also in session mode), and an INSERT succeeded."""
    pv = pgvalve(mode=mode, pool_size=2, max_overflow=0, checkout_timeout_ms=10000)
    cluster.primary.sql("create table if not exists guarded(x int); "
                        "alter table guarded owner to app", dbname=APP_DB)
    a = connect(pv)
    try:
        a.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        a.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        others = [connect(pv) for _ in range(2)] if mode == "transaction" else []

        def check(c, i):
            if c is a:
                assert one(c, "show default_transaction_read_only") == "on"
                assert one(c, "show default_transaction_isolation") == "repeatable read"
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    c.execute("insert into guarded values (1)")
            else:  # nothing reaches the next lenders
                assert one(c, "show default_transaction_read_only") == "off"
                c.execute("insert into guarded values (2)")

        if mode == "transaction":
            run_rounds(pv, [a] + others, check)
        else:
            for i in range(3):
                check(a, i)
        for c in others:
            c.close()
    finally:
        a.close()


def test_set_config_with_a_bound_value_follows_the_client(pv, cluster):
    """Row-level security's tenant id, as drivers and ORMs set it: set_config with parameters,
    through the extended protocol. It used to be dropped at the client's next transaction."""
    a = connect(pv)
    plain = connect(pv)
    try:
        a.execute("select set_config('app.tenant', %s, false)", ("tenant's 7",))

        def check(c, i):
            tenant = one(c, "select current_setting('app.tenant', true)")
            if c is a:
                assert tenant == "tenant's 7"
            else:
                assert tenant in (None, "")  # '' once a server has had the placeholder

        run_rounds(pv, [a, plain], check)
    finally:
        a.close()
        plain.close()


def test_reset_all_restores_defaults(pv, cluster, schemas):
    defaults = {s: server_default(cluster, s) for s in ("TimeZone", "DateStyle", "work_mem",
                                                         "search_path")}
    a = connect(pv)
    try:
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("SET DateStyle = 'German'")
        a.execute("SET work_mem = '13MB'")
        a.execute("SET search_path = s_a")

        def check_set(c, i):
            assert one(c, "show TimeZone") == "Asia/Tokyo"
            assert one(c, "show DateStyle") == "German, DMY"
            assert one(c, "show work_mem") == "13MB"
            assert one(c, "select v from marker") == "s_a"

        run_rounds(pv, [a], check_set)
        a.execute("RESET ALL")

        def check_reset(c, i):
            for name, value in defaults.items():
                assert one(c, f"show {name}") == value, name
            assert c.info.parameter_status("TimeZone") == defaults["TimeZone"]
            assert c.info.parameter_status("DateStyle") == defaults["DateStyle"]

        run_rounds(pv, [a], check_reset)
    finally:
        a.close()


def test_reset_one_setting(pv, cluster, schemas):
    default_wm = server_default(cluster, "work_mem")
    a = connect(pv)
    try:
        a.execute("SET work_mem = '13MB'")
        a.execute("SET search_path = s_a")
        a.execute("RESET work_mem")
        a.execute("SET search_path TO DEFAULT")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("RESET TimeZone")
        tz = server_default(cluster, "TimeZone")

        def check(c, i):
            assert one(c, "show work_mem") == default_wm
            assert one(c, "show search_path") == DEFAULT_SEARCH_PATH
            assert one(c, "show TimeZone") == tz

        run_rounds(pv, [a], check)
    finally:
        a.close()


def test_search_path_replayed_on_another_server(pv, schemas):
    a, b, c = connect(pv), connect(pv), connect(pv)
    try:
        a.execute("SET search_path = s_a")
        b.execute("SET search_path TO s_b, public")

        def check(conn, i):
            if conn is a:
                assert one(conn, "select v from marker") == "s_a"
                assert one(conn, "show search_path") == "s_a"
            elif conn is b:
                assert one(conn, "select v from marker") == "s_b"
                assert one(conn, "show search_path") == "s_b, public"
            else:
                assert one(conn, "show search_path") == DEFAULT_SEARCH_PATH
                assert one(conn, "select to_regclass('marker')") is None

        run_rounds(pv, [a, b, c], check)
    finally:
        for x in (a, b, c):
            x.close()


def test_set_local_does_not_leak(pv, cluster, schemas):
    default_wm = server_default(cluster, "work_mem")
    a, other = connect(pv), connect(pv)
    try:
        a.execute("SET search_path = s_a")
        with a.transaction():
            a.execute("SET LOCAL search_path = s_b")
            a.execute("SET LOCAL work_mem = '21MB'")
            assert one(a, "select v from marker") == "s_b"
            assert one(a, "show work_mem") == "21MB"
        # a SET that is rolled back does not stick either
        with a.transaction(force_rollback=True):
            a.execute("SET search_path = s_b")

        def check(c, i):
            assert one(c, "show work_mem") == default_wm
            if c is a:
                assert one(c, "select v from marker") == "s_a"
            else:
                assert one(c, "show search_path") == DEFAULT_SEARCH_PATH

        run_rounds(pv, [a, other], check)
    finally:
        a.close()
        other.close()


def test_set_local_outside_transaction_has_no_effect(pv, cluster):
    """PostgreSQL warns and ignores SET LOCAL outside a transaction block."""
    default_wm = server_default(cluster, "work_mem")
    a = connect(pv)
    try:
        a.execute("SET LOCAL work_mem = '9MB'")

        def check(c, i):
            assert one(c, "show work_mem") == default_wm

        run_rounds(pv, [a], check)
    finally:
        a.close()


def test_startup_options_apply_on_every_server(pv, schemas):
    a = connect(pv, options="-c%20search_path%3Ds_b%20-c%20work_mem%3D17MB")
    b = connect(pv)
    try:
        def check(c, i):
            if c is a:
                assert one(c, "select v from marker") == "s_b"
                assert one(c, "show work_mem") == "17MB"
            else:
                assert one(c, "show search_path") == DEFAULT_SEARCH_PATH

        run_rounds(pv, [a, b], check)
        # SET then RESET ALL goes back to the startup value, as in PostgreSQL
        a.execute("SET search_path = s_a")
        assert one(a, "select v from marker") == "s_a"
        a.execute("RESET ALL")
        run_rounds(pv, [a, b], check)
        a.execute("SET work_mem = '1MB'")
        a.execute("RESET work_mem")
        run_rounds(pv, [a, b], check)
    finally:
        a.close()
        b.close()


def test_discard_all_resets_remembered_state(pv, cluster, schemas):
    defaults = {s: server_default(cluster, s) for s in ("TimeZone", "work_mem", "search_path")}
    a = connect(pv)
    try:
        a.execute("SET search_path = s_a")
        a.execute("SET work_mem = '19MB'")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        assert one(a, "select v from marker") == "s_a"
        a.execute("DISCARD ALL")

        def check(c, i):
            for name, value in defaults.items():
                assert one(c, f"show {name}") == value, name

        run_rounds(pv, [a], check)
        assert a.info.parameter_status("TimeZone") == defaults["TimeZone"]
    finally:
        a.close()


def test_show_reflects_each_clients_state(pv, cluster, schemas):
    settings = [
        {"search_path": "s_a", "work_mem": "5MB", "TimeZone": "Asia/Tokyo",
         "DateStyle": "ISO, DMY", "IntervalStyle": "sql_standard", "application_name": "c0"},
        {"search_path": "s_b", "work_mem": "6MB", "TimeZone": "UTC",
         "DateStyle": "SQL, MDY", "IntervalStyle": "iso_8601", "application_name": "c1"},
        {"statement_timeout": "41s"},
    ]
    clients = [connect(pv) for _ in settings]
    defaults = {k: server_default(cluster, k) for s in settings for k in s}
    try:
        for c, s in zip(clients, settings):
            for k, v in s.items():
                c.execute(f"SET {k} = '{v}'")

        def check(c, i):
            mine = settings[clients.index(c)]
            for k in defaults:
                want = mine.get(k, defaults[k])
                assert one(c, f"show {k}") == want, k
                assert one(c, "select current_setting(%s)", (k,)) == want, k

        run_rounds(pv, clients, check)
    finally:
        for c in clients:
            c.close()


def test_first_client_with_startup_parameter_the_server_normalises(pv, monkeypatch):
    """PgJDBC sends DateStyle=ISO in its startup packet; PostgreSQL answers with the normalised
    'ISO, MDY'. For the first client of a fresh pgvalve (no server parameters known yet), the
    login must still follow the protocol: AuthenticationOk first, then ParameterStatus*,
    BackendKeyData, ReadyForQuery (drivers reject anything else before AuthenticationOk)."""
    import pgwire

    seen = []
    real_read = pgwire.read_message

    def recording_read(sock):
        kind, payload = real_read(sock)
        seen.append((kind, payload))
        return kind, payload

    monkeypatch.setattr(pgwire, "read_message", recording_read)
    c = pgwire.RawClient("127.0.0.1", pv.port, "app", "app-secret", APP_DB,
                         params={"DateStyle": "ISO", "TimeZone": "UTC"}, timeout=10)
    try:
        c.connect()
        kinds = b"".join(k for k, _ in seen)
        auth_ok = next(i for i, (k, p) in enumerate(seen) if k == b"R" and p[:4] == b"\0\0\0\0")
        assert b"S" not in kinds[:auth_ok], f"ParameterStatus before AuthenticationOk: {kinds!r}"
        assert kinds[auth_ok + 1:].lstrip(b"S") == b"KZ", kinds
        assert c.parameters["DateStyle"] == "ISO, MDY"
        assert c.rows("show DateStyle") == [["ISO, MDY"]]
    finally:
        monkeypatch.undo()
        c.terminate()


def test_first_client_libpq_datestyle_iso(pv, monkeypatch):
    """The same through libpq (PGDATESTYLE is sent as a startup parameter)."""
    monkeypatch.setenv("PGDATESTYLE", "ISO")
    with psycopg.connect(pv.dsn(), autocommit=True) as conn:
        assert one(conn, "show DateStyle") == "ISO, MDY"
        assert one(conn, "select '2024-03-05'::date::text") == "2024-03-05"


LEAKY_SETS = {
    "set_in_transaction": ["BEGIN", "SET search_path = s_b", "SET work_mem = '23MB'", "COMMIT"],
    "set_in_one_transaction_query": ["BEGIN; SET search_path = s_b; SET work_mem = '23MB'; "
                                     "COMMIT"],
    "set_in_multi_statement_query": ["SET search_path = s_b; SET work_mem = '23MB'; select 1"],
}


@pytest.mark.parametrize("statements", list(LEAKY_SETS.values()), ids=list(LEAKY_SETS))
def test_set_that_outlives_its_transaction_does_not_leak(pv, cluster, schemas, statements):
    """A plain SET inside a transaction block that commits, or in a multi-statement simple
    query, stays on that server after the transaction (PostgreSQL semantics). Whatever pgvalve
    does for the client that ran it, other clients that land on that server afterwards must not
    inherit it."""
    default_wm = server_default(cluster, "work_mem")
    a, others = connect(pv), [connect(pv), connect(pv)]
    try:
        for sql in statements:
            a.execute(sql)

        def check(c, i):
            assert one(c, "show search_path") == DEFAULT_SEARCH_PATH
            assert one(c, "show work_mem") == default_wm

        run_rounds(pv, others, check)
    finally:
        a.close()
        for c in others:
            c.close()


def test_settings_the_server_refuses_end_the_client_not_the_server(pv, cluster):
    # PostgreSQL refuses such a login outright. Before, each query failed with 08006 and cost a
    # new server connection: three such clients opened 1,800 backends in 5 s.
    from test_http import metric, scrape
    with connect(pv) as c:
        one(c, "select 1")
    opened = metric(scrape(pv), "pgvalve_server_connections_opened_total")
    for _ in range(10):
        with connect(pv, options="-c%20work_mem%3Dabc") as bad:
            with pytest.raises(psycopg.OperationalError) as refused:
                one(bad, "select 1")
        assert "pgvalve: the server refused this client's session settings" in str(refused.value)
        assert "work_mem" in str(refused.value)
    # The pool's server connections, each given back clean: at most a second one opened.
    assert metric(scrape(pv), "pgvalve_server_connections_opened_total") - opened <= 1
    with connect(pv) as c:
        assert one(c, "show work_mem") == server_default(cluster, "work_mem")


def test_set_constraints_ends_with_its_transaction(pgvalve, cluster):
    """SET CONSTRAINTS lasts as long as its transaction (Django and Rails load fixtures under
    it). It was followed as a setting named "constraints": the next client on the server got
    FATAL 42704 from pgvalve's RESET of it, and so did every client after."""
    cluster.primary.sql("drop table if exists deferred_fk; create table deferred_fk("
                        "id int primary key, parent int references deferred_fk "
                        "deferrable initially immediate); alter table deferred_fk owner to app",
                        dbname=APP_DB)
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=10000)
    with connect(pv) as a:
        with a.transaction():
            a.execute("SET CONSTRAINTS ALL DEFERRED")
            a.execute("insert into deferred_fk values (1, 2)")  # the parent comes later
            a.execute("insert into deferred_fk values (2, null)")
        # the next transaction checks at once again, on the same (only) server
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            a.execute("insert into deferred_fk values (3, 4)")
        for _ in range(3):
            with connect(pv) as other:
                assert one(other, "select count(*) from deferred_fk") == 2
        assert one(a, "select count(*) from deferred_fk") == 2
