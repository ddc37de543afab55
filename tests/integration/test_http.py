"""The HTTP endpoint on admin_listen (DESIGN §6): /health, /ready, /status, /metrics against a
real cluster and the real binary. HTTP via urllib / http.client from the stdlib."""

import http.client
import json
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from conftest import pgvalve_binary
from pgcluster import APP_DB, APP_USER, Pgvalve, free_port, wait_until

OPS_USER = "ops"
OPS_PASSWORD = "ops-secret"


def get(pv, path, method="GET", timeout=10):
    """(status, body text, headers) of one request; 4xx/5xx are returned, not raised."""
    req = urllib.request.Request(f"http://127.0.0.1:{pv.admin_port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """[(name, {label: value}, float)] of every sample; checks TYPE lines come first."""
    samples, typed = [], set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed, f"{name} has no # TYPE line"
        samples.append((name, dict(LABEL.findall(labels)), value))
    return samples


def metric(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    found = [v for n, l, v in samples
             if n == name and all(l.get(k) == str(v2) for k, v2 in labels.items())]
    assert found, f"no sample {name}{labels}"
    return sum(found)


def scrape(pv):
    status, body, headers = get(pv, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(body)


@pytest.fixture
def pv(pgvalve):
    return pgvalve(mode="transaction", pool_size=4,
                   users=[{"name": APP_USER, "password": "app-secret"},
                          {"name": OPS_USER, "password": OPS_PASSWORD, "admin": True}])


def primary_host(cluster):
    return f"127.0.0.1:{cluster.primary.port}"


def test_health(pv):
    status, body, headers = get(pv, "/health")
    assert (status, body) == (200, "ok\n")
    assert headers["Content-Type"].startswith("text/plain")


def test_not_found_and_method_not_allowed(pv):
    assert get(pv, "/nope")[0] == 404
    assert get(pv, "/index.html")[0] == 404
    status, _, headers = get(pv, "/health", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert get(pv, "/metrics", method="DELETE")[0] == 405
    # a query string does not change the route
    assert get(pv, "/health?verbose=1")[:2] == (200, "ok\n")


def test_keep_alive_and_limits(pv):
    c = http.client.HTTPConnection("127.0.0.1", pv.admin_port, timeout=10)
    for path, want in [("/health", 200), ("/nope", 404), ("/status", 200), ("/metrics", 200)]:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        assert r.status == want
        assert not r.will_close, "keep-alive connection closed by the server"
    c.close()
    # a request too large is refused and the connection closed
    c = http.client.HTTPConnection("127.0.0.1", pv.admin_port, timeout=10)
    c.request("GET", "/health", headers={"X-Big": "x" * 20000})
    r = c.getresponse()
    assert r.status == 413
    c.close()
    # garbage is a 400, not a crash
    with socket.create_connection(("127.0.0.1", pv.admin_port), timeout=10) as s:
        s.sendall(b"\x00\x01 not http\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert get(pv, "/health")[0] == 200


def test_idle_http_client_is_dropped(pv):
    """A connection that never sends a whole request is closed (read timeout, 10 s)."""
    with socket.create_connection(("127.0.0.1", pv.admin_port), timeout=20) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert 5 <= time.monotonic() - t0 <= 15
    assert get(pv, "/health")[0] == 200


def test_slow_clients_cannot_keep_a_health_probe_out(pv):
    """More unfinished requests than the HTTP server keeps connections for (64): each new
    connection closes the one that has waited longest, so probes and scrapes get answers."""
    slow = []
    try:
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", pv.admin_port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
            slow.append(s)
        for _ in range(10):
            assert get(pv, "/health")[0] == 200
            assert get(pv, "/metrics")[0] == 200
    finally:
        for s in slow:
            s.close()


def test_a_connection_flood_is_logged_once_per_ten_seconds_with_a_count(pv):
    """Each connection closed at the limit was a warning line: a flood wrote thousands a second.
    As client_refusals_dropped and http_accept_failed: one line per 10 s, with how many were
    closed since the last one, and what the end of the flood left unsaid is said after 10 s."""
    held = []
    try:
        for _ in range(64 + 100):
            held.append(socket.create_connection(("127.0.0.1", pv.admin_port), timeout=10))
        assert get(pv, "/health")[0] == 200  # accepted up to here

        def lines():
            return [line for line in pv.log_text().splitlines()
                    if "event=http_too_many_connections" in line]

        wait_until(lambda: lines(), 5, message="a first line")
        time.sleep(1)
        assert len(lines()) == 1, lines()
        wait_until(lambda: len(lines()) == 2, 13, interval=0.2, message="the rest, counted")
        closed = [int(re.search(r"\bclosed=(\d+)", line).group(1)) for line in lines()]
        assert sum(closed) == 101, lines()  # the 100 over the limit and the probe's
    finally:
        for s in held:
            s.close()


def test_a_transfer_encoding_other_than_chunked_is_refused_and_the_connection_closed(pv):
    """RFC 9112 §6.3: Transfer-Encoding: gzip (chunked not last) leaves the request's length
    unknown. It was read as a request without a body, and the request smuggled after it was
    answered: now 400 and the connection is closed, the smuggled request unanswered."""
    for coding in (b"gzip", b"gzip, chunked", b"chunked, gzip"):
        s = socket.create_connection(("127.0.0.1", pv.admin_port), timeout=5)
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding +
                      b"\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break  # closed by pgvalve
                got += chunk
        finally:
            s.close()
        assert got.startswith(b"HTTP/1.1 400 "), (coding, got[:200])
        assert got.count(b"HTTP/1.1 ") == 1, (coding, got)
    # chunked alone is read as such, and the connection goes on.
    s = socket.create_connection(("127.0.0.1", pv.admin_port), timeout=5)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"2\r\nhi\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n"
                  b"Connection: close\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    finally:
        s.close()
    assert got.count(b"HTTP/1.1 200 ") == 2, got


def test_head_is_answered_as_get_without_a_body(pv):
    """RFC 9110 §9.3.2: load balancers and uptime checkers probe with HEAD."""
    c = http.client.HTTPConnection("127.0.0.1", pv.admin_port, timeout=10)
    for path, want in [("/health", 200), ("/metrics", 200), ("/status", 200), ("/", 200),
                       ("/nope", 404)]:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.request("HEAD", path)
        h = c.getresponse()
        assert (h.status, h.read()) == (want, b"")
        assert h.getheader("Content-Type") == r.getheader("Content-Type")
        if path in ("/", "/health", "/nope"):  # the others change from one answer to the next
            assert int(h.getheader("Content-Length")) == len(body)
        assert not h.will_close
    # nothing of a body came after the HEAD answers: the next answer is whole
    c.request("GET", "/health")
    r = c.getresponse()
    assert (r.status, r.read()) == (200, b"ok\n")
    c.close()


def test_absolute_form_targets_are_accepted(pv):
    """RFC 9112 §3.2.2: a server must accept a target written as an absolute URL."""
    c = http.client.HTTPConnection("127.0.0.1", pv.admin_port, timeout=10)
    for target, want, start in [("http://pgvalve.example:9930/health", 200, b"ok\n"),
                                ("HTTP://pgvalve.example/health?verbose=1", 200, b"ok\n"),
                                ("http://pgvalve.example/metrics", 200, b"# HELP pgvalve_"),
                                ("http://pgvalve.example", 200, b"<!doctype html>"),
                                ("http://pgvalve.example/nope", 404, b"not found")]:
        c.request("GET", target)
        r = c.getresponse()
        body = r.read()
        assert r.status == want, target
        assert body.lower().startswith(start.lower()), (target, body[:80])
    c.close()


def read_until_closed(s, timeout):
    """Every byte until the server closes (or `timeout` passes without a byte)."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def test_pipelined_requests_are_bounded_per_connection(pv):
    """The answer to the 100th request sent ahead in a row closes the connection; requests
    that each wait for their answer keep it open."""
    with socket.create_connection(("127.0.0.1", pv.admin_port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 150)
        answers = read_until_closed(s, 5).split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 100
    assert all(a.startswith(b"200 OK") for a in answers)
    assert b"Connection: close" in answers[-1] and b"Connection: close" not in answers[-2]
    c = http.client.HTTPConnection("127.0.0.1", pv.admin_port, timeout=10)
    for _ in range(150):
        c.request("GET", "/health")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"ok\n")
        assert not r.will_close
    c.close()


def test_clients_that_do_not_read_answers_cannot_keep_a_health_probe_out(pv):
    """64 connections (the limit) that pipeline requests (fewer than the 100 that close a
    connection) and never read the answers: each new connection closes the one that has been
    behind longest, so probes and scrapes get answers."""
    stuck = []
    try:
        for _ in range(64):
            s = socket.socket()
            # A small window and segment size: the server's socket buffer stays small, and its
            # writes stall after a few answers.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
            s.settimeout(10)
            s.connect(("127.0.0.1", pv.admin_port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 90)
            stuck.append(s)
        time.sleep(1)  # their answers fill the socket buffers
        for _ in range(5):
            assert get(pv, "/health")[:2] == (200, "ok\n")
            assert get(pv, "/metrics")[0] == 200
    finally:
        for s in stuck:
            s.close()
    # Each closed an old connection, none the new one.
    assert re.search(r"event=http_too_many_connections limit=64 closed=\d+ new_closed=0 ",
                     pv.log_text())


def test_ready_ok(pv, cluster):
    # no client yet: the primary is checked with a TCP connect
    status, body, _ = get(pv, "/ready")
    assert status == 200, body
    assert body.startswith("ready\n")
    assert f"{APP_DB}/s0 primary {primary_host(cluster)}: ok" in body
    # once the health checks have seen it, they are the evidence
    wait_until(lambda: "ok (health check: up, timeline 1)" in get(pv, "/ready")[1], 5,
               message="/ready from the health checks")


def test_ready_503_when_primary_unreachable(pgvalve, cluster):
    dead = free_port()  # nothing listens there
    pv = pgvalve(databases={APP_DB: {"shards": [
        {"name": "s0", "primary": f"127.0.0.1:{dead}", "replicas": []}]}})
    t0 = time.monotonic()
    status, body, _ = get(pv, "/ready")
    assert time.monotonic() - t0 < 3
    assert status == 503, body
    assert body.startswith("not ready\n")
    # Before the first health check a TCP connect decides; after it, the check's error.
    assert (f"{APP_DB}/s0 primary 127.0.0.1:{dead}: not ready: TCP connect failed" in body or
            f"{APP_DB}/s0 primary 127.0.0.1:{dead}: not ready: down (" in body), body
    # the process itself still serves
    assert get(pv, "/health")[0] == 200
    # libpq's two-line error is one logfmt value: no raw newline or tab in the line
    wait_until(lambda: "event=host_down" in pv.log_text(), 10, message="host_down logged")
    line = next(l for l in pv.log_text().splitlines() if "event=host_down" in l)
    assert "\t" not in line and "Is the server running" in line, line


def test_ready_503_while_draining(pgvalve):
    pv = pgvalve(shutdown_timeout_s=10)
    conn = pv.connect(autocommit=False)
    conn.execute("select 1")  # a transaction is open: the drain waits for it
    pv.signal(signal.SIGTERM)
    status, body = wait_until(lambda: (lambda r: r[:2] if r[0] == 503 else None)(get(pv, "/ready")),
                              timeout=5, message="/ready 503 while draining")
    assert body == "draining\n"
    assert get(pv, "/health")[0] == 200
    status, body, _ = get(pv, "/status")
    assert json.loads(body)["draining"] is True
    conn.commit()
    conn.close()
    assert pv.wait_exit(10) == 0
    # the HTTP listener is gone with the process
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pv.admin_port), timeout=2)


def test_metrics_follow_the_pool(pv, cluster):
    samples = scrape(pv)
    assert metric(samples, "pgvalve_build_info") == 1
    assert metric(samples, "pgvalve_client_connections_open") == 0

    host = primary_host(cluster)
    pool = dict(database=APP_DB, user=APP_USER, host=host)
    server = dict(database=APP_DB, shard="s0", host=host, role="primary")
    with pv.connect() as conn:
        conn.execute("select 1")
        # The server goes back to the pool just after the answer is written: the client can
        # read it first.
        deadline = time.monotonic() + 5
        while True:
            before = scrape(pv)
            idle = metric(before, "pgvalve_server_connections", state="idle", **server)
            if idle >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        checkouts0 = metric(before, "pgvalve_pool_checkouts_total", **pool)
        assert idle >= 1
        assert metric(before, "pgvalve_server_connections_opened_total", **pool) >= 1
        assert metric(before, "pgvalve_client_connections", state="active") == 1
        assert metric(before, "pgvalve_client_connections", state="waiting") == 0
        assert metric(before, "pgvalve_client_connections_open") == 1
        for i in range(10):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
        after = scrape(pv)
        assert metric(after, "pgvalve_pool_checkouts_total", **pool) >= checkouts0 + 10

        # the same figures as the admin console's SHOW POOLS and /status
        with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                             autocommit=True) as admin:
            cur = admin.execute("SHOW POOLS")
            cols = [d.name for d in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
            now = scrape(pv)
        _, body, _ = get(pv, "/status")
    row = next(r for r in rows if r["database"] == APP_DB and r["user"] == APP_USER)
    status_pool = next(p for p in json.loads(body)["pools"]
                       if p["database"] == APP_DB and p["user"] == APP_USER)
    for state, col in [("idle", "sv_idle"), ("active", "sv_active"), ("login", "sv_login")]:
        assert metric(now, "pgvalve_server_connections", state=state, **server) == int(row[col])
    assert metric(now, "pgvalve_pool_size", **pool) == int(row["size"]) == status_pool["size"]
    assert status_pool["checked_in"] == int(row["checked_in"])
    assert metric(now, "pgvalve_pool_checkouts_total", **pool) <= status_pool["total_checkouts"]
    assert metric(now, "pgvalve_pool_checkout_timeouts_total", **pool) == 0


def test_metrics_count_statements_transactions_errors_and_hosts(pv, cluster):
    with pv.connect() as conn:
        for i in range(20):
            conn.execute("select %s::int", (i,))
        conn.execute("create temp table m (x int)")
        with conn.transaction():
            for i in range(3):
                conn.execute("insert into m values (%s)", (i,))
        conn.execute("update m set x = x + 1")
        for _ in range(2):
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute("do $$ begin raise unique_violation using message = 'dup'; end $$")
    s = scrape(pv)
    base = dict(database=APP_DB, shard="s0", role="primary")
    assert metric(s, "pgvalve_queries_total", kind="select", **base) == 20
    assert metric(s, "pgvalve_queries_total", kind="insert", **base) == 3
    assert metric(s, "pgvalve_queries_total", kind="update", **base) == 1
    # 20 selects + create + begin/3 inserts/commit as one + update + 2 failed DO blocks.
    assert metric(s, "pgvalve_transactions_total", database=APP_DB) == 20 + 1 + 1 + 1 + 2
    assert metric(s, "pgvalve_errors_total", sqlstate_class="23") == 2
    total = 20 + 3 + 1 + 1 + 2 + 2  # selects, inserts, update, create, begin+commit, DO blocks
    assert metric(s, "pgvalve_query_duration_seconds_count", database=APP_DB) == total
    assert metric(s, "pgvalve_query_duration_seconds_bucket", database=APP_DB, le="+Inf") == total
    assert metric(s, "pgvalve_query_duration_seconds_sum", database=APP_DB) > 0
    assert metric(s, "pgvalve_slow_queries_total") == 0
    # Each of the 20 selects and the CREATE asked for a server (transaction pooling) and got
    # one; the temporary table then pinned the server to the client: no more checkouts.
    assert metric(s, "pgvalve_pool_checkout_wait_seconds_count") == 21
    assert metric(s, "pgvalve_pool_checkout_wait_seconds_bucket", le="+Inf") == \
        metric(s, "pgvalve_pool_checkout_wait_seconds_count")
    assert metric(s, "pgvalve_bytes_total", direction="received") > 29 * 20
    assert metric(s, "pgvalve_bytes_total", direction="sent") > 29 * 20
    assert metric(s, "pgvalve_failovers_total") == 0
    wait_until(lambda: metric(scrape(pv), "pgvalve_host_up", host=primary_host(cluster),
                              role="primary") == 1, 10, message="host_up after the first check")


def test_status_json(pv, cluster):
    with pv.connect() as conn:
        conn.execute("select 1")
        status, body, headers = get(pv, "/status")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert isinstance(doc["version"], str) and doc["version"]
    assert doc["clients"] == 1
    assert doc["draining"] is False
    [pool] = [p for p in doc["pools"] if p["database"] == APP_DB and p["user"] == APP_USER]
    assert pool["host"] == primary_host(cluster)
    assert pool["size"] >= 1 and pool["total_created"] >= 1 and pool["total_checkouts"] >= 1
    assert pool["checked_in"] + pool["checked_out"] + pool["opening"] == pool["size"]
    for key in ("overflow", "waiting", "clients", "total_waits", "total_timeouts",
                "total_closed"):
        assert isinstance(pool[key], int)
    [db] = doc["databases"]
    assert db["name"] == APP_DB
    assert db["shards"] == [{"name": "s0", "primary": primary_host(cluster), "replicas": []}]
    # Hosts as SHOW HOSTS has them, the costliest statements and the latest slow ones.
    wait_until(lambda: json.loads(get(pv, "/status")[1])["hosts"][0]["state"] == "up", 10,
               message="the primary checked")
    doc = json.loads(get(pv, "/status")[1])
    [host] = doc["hosts"]
    assert (host["host"], host["role"], host["writable"]) == (primary_host(cluster), "primary",
                                                               True)
    assert host["lag_ms"] is None and host["last_error"] is None
    [query] = [q for q in doc["queries"] if q["query"] == "select $1"]
    assert query["calls"] == 1 and query["rows"] == 1 and len(query["fingerprint"]) == 16
    assert query["p95_ms"] <= query["total_ms"]
    assert doc["slow_queries"] == [] and doc["failovers"] == 0


def test_admin_listen_bind_failure_exits_1(cluster, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pv = Pgvalve(cluster, tmp_path / "bindfail", binary=pgvalve_binary(),
                     admin_listen=f"127.0.0.1:{port}")
        pv.write_config()
        r = subprocess.run([pv.binary, "--config", str(pv.config_path)], capture_output=True,
                           text=True, timeout=15)
    assert r.returncode == 1, r.stderr
    assert "event=admin_listen_failed" in r.stderr
