"""TLS to clients (DESIGN §3 `tls`, issue 7): SSLRequest answered 'S' and a TLS handshake
(OpenSSL, TLS 1.2 and later), `tls.mode` disable / prefer / require, client certificates checked
against `tls.client_ca`, certificate files read again on SIGHUP. A test CA, server and client
certificates are made here with the openssl CLI. Clients: psql and psycopg (libpq, sslmode
require / verify-full), PgJDBC over TLS, and raw sockets for what drivers never send."""

import copy
import re
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from pgwire import PgWireError, RawClient, query_message
from test_drivers import DRIVERS, JDBC_JAR, run
from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER, SANITIZED
from test_limits import assert_closed, assert_pgvalve_message

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def make_ca(d: Path, name: str):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def make_cert(d: Path, ca: str, name: str, cn: str, san: str | None = None):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", f"{name}.crt", cwd=d)
    (d / f"{name}.key").chmod(0o600)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other_ca")
    make_cert(d, "ca", "server", "pgvalve-test", "IP:127.0.0.1,DNS:localhost")
    make_cert(d, "ca", "server2", "pgvalve-renewed", "IP:127.0.0.1,DNS:localhost")
    make_cert(d, "ca", "client", APP_USER)
    make_cert(d, "other_ca", "stranger", APP_USER)
    return d


def tls_conf(pki, mode="require", **extra):
    return {"cert": str(pki / "server.crt"), "key": str(pki / "server.key"), "mode": mode,
            **extra}


def one(conn, sql):
    return conn.execute(sql).fetchone()[0]


def subject_seen_by_client(pv) -> str:
    """The server certificate's subject, as a client sees it (openssl s_client speaks the
    PostgreSQL SSLRequest itself)."""
    r = subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-connect",
                        f"127.0.0.1:{pv.port}", "-brief"], input="", capture_output=True,
                       text=True, timeout=20)
    m = re.search(r"Peer certificate: (.*)", r.stdout + r.stderr)
    return m.group(1) if m else r.stdout + r.stderr


def test_require_serves_tls_and_refuses_plaintext_28000(pgvalve, pki):
    pv = pgvalve(mode="transaction", pool_size=2, tls=tls_conf(pki, "require"), users=APP_AND_OPS)
    with psycopg.connect(pv.dsn(sslmode="require"), autocommit=True) as c:
        assert c.pgconn.ssl_in_use
        assert one(c, "select 41 + 1") == 42
        # SHOW CLIENTS tells who uses TLS (the console's own session too).
        with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve",
                                    sslmode="require"), autocommit=True) as a:
            cur = a.execute("SHOW CLIENTS")
            cols = [d.name for d in cur.description]
            tls = [dict(zip(cols, r))["tls"] for r in cur.fetchall()]
        assert len(tls) == 2 and all(t.startswith("TLSv1.") for t in tls), tls
        # A result far larger than one TLS record, and a large statement the other way.
        big = "x" * 3_000_000
        assert one(c, f"select length(repeat('ab', 1500000))") == 3_000_000
        assert one(c, f"select length('{big}')") == len(big)
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(pv.dsn(sslmode="disable"))
    assert "28000" in str(ei.value) or "TLS is required" in str(ei.value), ei.value
    r = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=5)
    with pytest.raises(PgWireError) as pe:
        r.connect()
    assert pe.value.sqlstate == "28000", pe.value.fields
    assert_pgvalve_message(pe.value.message)
    assert "tls.mode = require" in pe.value.message


class TlsRawClient(RawClient):
    """A raw client over TLS (no certificate check): SSLRequest, 'S', handshake."""

    def open(self):
        plain = super().open()
        plain.sendall(SSL_REQUEST)
        assert plain.recv(1) == b"S"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(plain)
        return self.sock


def test_a_tls_client_that_leaves_while_waiting_leaves_the_queue(pgvalve, pki, cluster):
    """libpq and most TLS stacks send close_notify before their FIN: the end behind it is seen
    too, and the request of the client that left never runs."""
    from itutil import show_pools
    cluster.primary.psql("CREATE TABLE IF NOT EXISTS left_waiting_tls (n int)", dbname=APP_DB)
    cluster.primary.psql("GRANT ALL ON left_waiting_tls TO app", dbname=APP_DB)
    cluster.primary.psql("TRUNCATE left_waiting_tls", dbname=APP_DB)
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=10000,
                 tls=tls_conf(pki, "require"), users=APP_AND_OPS)
    with pv.connect(autocommit=False, sslmode="require") as holder:
        holder.execute("select 1")  # holds the only server
        gone = TlsRawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB).connect()
        gone.sock.sendall(query_message("insert into left_waiting_tls values (1)"))
        wait_until(lambda: show_pools(pv)[0]["cl_waiting"] == "1", 5, message="it waits")
        gone.sock.settimeout(0.3)
        try:
            gone.sock.unwrap()  # close_notify; pgvalve sends none back while it waits
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.5)  # the FIN comes well after the close_notify
        gone.sock.close()
        wait_until(lambda: show_pools(pv)[0]["cl_waiting"] == "0", 5,
                   message="the queue forgets it")
        holder.commit()
        with pv.connect(sslmode="require") as c:
            assert c.execute("select count(*) from left_waiting_tls").fetchone() == (0,)
    assert "event=client_left_while_waiting" in pv.log_text()


@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer keeps freed memory in quarantine")
def test_an_idle_tls_client_lets_go_of_what_a_large_result_grew(pgvalve, pki):
    # OpenSSL's memory buffers keep the size of the largest flight they carried: 100 clients
    # that each read a 512 KiB row and then idle used to hold about 512 KiB each.
    from itutil import rss_bytes
    pv = pgvalve(mode="transaction", pool_size=4, tls=tls_conf(pki, "require"))
    sql = "select repeat('x', 524288)"
    with psycopg.connect(pv.dsn(sslmode="require"), autocommit=True) as warm:
        warm.execute(sql).fetchone()
    time.sleep(0.3)
    before = rss_bytes(pv.pid)
    clients = []
    try:
        for _ in range(100):
            c = psycopg.connect(pv.dsn(sslmode="require"), autocommit=True)
            clients.append(c)
            assert len(one(c, sql)) == 524288
        time.sleep(0.5)
        per_client = (rss_bytes(pv.pid) - before) / len(clients)
        # About 18 KiB: OpenSSL's state for a connection.
        assert per_client < 64 * 1024, f"{per_client / 1024:.0f} KiB per idle TLS client"
    finally:
        for c in clients:
            c.close()


def test_verify_full_with_the_test_ca_and_psql(pgvalve, pki):
    pv = pgvalve(mode="transaction", pool_size=2, tls=tls_conf(pki, "prefer"))
    dsn = (f"host=localhost port={pv.port} dbname={APP_DB} user={APP_USER} "
           f"password={APP_PASSWORD} sslmode=verify-full sslrootcert={pki / 'ca.crt'}")
    r = subprocess.run(["psql", dsn, "-XAtc", "select 'through tls'", "-c", "\\conninfo"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "through tls" in r.stdout and "SSL connection" in r.stdout, r.stdout
    # The same client with another CA refuses pgvalve's certificate.
    bad = dsn.replace(str(pki / "ca.crt"), str(pki / "other_ca.crt"))
    r = subprocess.run(["psql", bad, "-XAtc", "select 1"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "certificate verify failed" in r.stderr, r.stderr
    # prefer: plaintext clients are still served.
    with psycopg.connect(pv.dsn(sslmode="disable"), autocommit=True) as c:
        assert not c.pgconn.ssl_in_use
        assert one(c, "select 1") == 1


def test_client_certificates_against_client_ca(pgvalve, pki):
    pv = pgvalve(mode="transaction", pool_size=2,
                 tls=tls_conf(pki, "require", client_ca=str(pki / "ca.crt")))
    with psycopg.connect(pv.dsn(sslmode="require", sslcert=pki / "client.crt",
                                sslkey=pki / "client.key"), autocommit=True) as c:
        assert one(c, "select 1") == 1
    for cert in (None, "stranger"):
        kw = {} if cert is None else {"sslcert": pki / f"{cert}.crt", "sslkey": pki / f"{cert}.key"}
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pv.dsn(sslmode="require", **kw))
    assert "client_tls_failed" in pv.log_text()


def test_jdbc_over_tls(pgvalve, pki, cluster, tmp_path):
    assert JDBC_JAR.exists()
    pv = pgvalve(mode="transaction", pool_size=2, max_overflow=0, checkout_timeout_ms=15000,
                 tls=tls_conf(pki, "require"))
    cluster.primary.sql("drop table if exists jdbc_results; "
                        "create table jdbc_results (thread int, i int); "
                        f"alter table jdbc_results owner to {APP_USER}", dbname=APP_DB)
    r, out = run(["javac", "-cp", str(JDBC_JAR), "-d", str(tmp_path),
                  str(DRIVERS / "JdbcPrepared.java")], timeout=120)
    assert r.returncode == 0, out
    url = (f"jdbc:postgresql://localhost:{pv.port}/{APP_DB}?sslmode=verify-full"
           f"&sslrootcert={pki / 'ca.crt'}")
    r, out = run(["java", "-cp", f"{tmp_path}:{JDBC_JAR}", "JdbcPrepared", url, APP_USER,
                  APP_PASSWORD, "3", "50"], timeout=150)
    assert r.returncode == 0 and r.stdout.startswith("OK"), out


def test_bytes_after_sslrequest_before_the_handshake_are_refused(pgvalve, pki):
    pv = pgvalve(mode="transaction", pool_size=2, tls=tls_conf(pki, "prefer"))
    s = socket.create_connection(("127.0.0.1", pv.port), timeout=5)
    # SSLRequest and, in the same write, what a plaintext startup would be.
    s.sendall(SSL_REQUEST + struct.pack("!ii", 9, 196608) + b"\0")
    data = s.recv(4096)
    assert data[:1] == b"E", data  # no 'S': an error, in plaintext, then the close
    assert b"before the TLS handshake" in data
    assert_closed(s)
    s.close()


def test_gssencrequest_is_answered_n(pgvalve, pki):
    pv = pgvalve(mode="transaction", pool_size=2, tls=tls_conf(pki, "prefer"))
    with socket.create_connection(("127.0.0.1", pv.port), timeout=5) as s:
        s.sendall(GSSENC_REQUEST)
        assert s.recv(1) == b"N"
    # libpq tries GSS encryption first when it can, then TLS: both work out.
    with psycopg.connect(pv.dsn(sslmode="require", gssencmode="prefer"), autocommit=True) as c:
        assert c.pgconn.ssl_in_use


def test_tls_1_1_is_refused(pgvalve, pki):
    pv = pgvalve(mode="transaction", pool_size=2, tls=tls_conf(pki, "require"))
    r = subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-connect",
                        f"127.0.0.1:{pv.port}", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
                       input="", capture_output=True, text=True, timeout=20)
    # The client is willing (security level 0 allows TLS 1.1); pgvalve is not.
    assert r.returncode != 0 and "protocol version" in r.stdout + r.stderr, r.stdout + r.stderr
    with psycopg.connect(pv.dsn(sslmode="require", ssl_min_protocol_version="TLSv1.2"),
                         autocommit=True) as c:
        assert one(c, "select 1") == 1


def test_sighup_reads_the_certificate_files_again(pgvalve, pki, tmp_path):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_bytes((pki / "server.crt").read_bytes())
    key.write_bytes((pki / "server.key").read_bytes())
    key.chmod(0o600)
    pv = pgvalve(mode="transaction", pool_size=2,
                 tls={"cert": str(cert), "key": str(key), "mode": "require"})
    assert "CN = pgvalve-test" in subject_seen_by_client(pv) or \
        "CN=pgvalve-test" in subject_seen_by_client(pv)
    held = psycopg.connect(pv.dsn(sslmode="require"), autocommit=True)
    cert.write_bytes((pki / "server2.crt").read_bytes())
    key.write_bytes((pki / "server2.key").read_bytes())
    pv.reload()
    wait_until(lambda: "renewed" in subject_seen_by_client(pv), 5, interval=0.2,
               message="the renewed certificate is served")
    assert one(held, "select 2") == 2  # a client on the old certificate is not dropped
    # A broken file is refused with the reload; the certificate in use stays.
    key.write_text("not a key\n")
    offset = len(pv.log_text())
    pv.reload()
    wait_until(lambda: "reload_failed" in pv.log_text()[offset:], 5, message="reload refused")
    assert "renewed" in subject_seen_by_client(pv)
    with psycopg.connect(pv.dsn(sslmode="require"), autocommit=True) as c:
        assert one(c, "select 3") == 3
    held.close()


def start_on_a_terminal(pv):
    """Starts `pv` as Pgvalve.start does, but with a controlling terminal (a pty), where
    OpenSSL's default asks for a key's passphrase. Returns the pty's master end."""
    import fcntl
    import os
    import pty
    import termios
    from pgcluster import _LIVE
    master, slave = pty.openpty()

    def on_terminal():
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    pv.write_config()
    pv._logf = open(pv.log_path, "ab")
    pv.proc = subprocess.Popen([pv.binary, "--config", str(pv.config_path)], stdin=slave,
                               stdout=pv._logf, stderr=subprocess.STDOUT, cwd=str(pv.workdir),
                               preexec_fn=on_terminal)
    os.close(slave)
    _LIVE.append(pv)
    return master


def terminal_output(master) -> bytes:
    import os
    import select
    out = b""
    while select.select([master], [], [], 0.1)[0]:
        try:
            out += os.read(master, 4096)
        except OSError:
            break
    return out


def test_an_encrypted_key_is_refused_without_asking_for_its_passphrase(pki, cluster, tmp_path):
    """Found by a review: with a terminal, OpenSSL asked for the passphrase of an encrypted
    tls.key, at start and at every SIGHUP, which blocked the control thread (/status timed
    out). pgvalve asks nothing and says why: at start it stops, a reload is refused."""
    import os
    import urllib.request
    from pgcluster import Pgvalve, wait_for_port
    encrypted = tmp_path / "encrypted.key"
    openssl("pkey", "-in", str(pki / "server.key"), "-out", str(encrypted), "-aes256",
            "-passout", "pass:abcd", cwd=tmp_path)
    key = tmp_path / "live.key"
    key.write_bytes((pki / "server.key").read_bytes())
    key.chmod(0o600)
    pv = Pgvalve(cluster, tmp_path / "reload", mode="transaction", pool_size=1,
                 tls={"cert": str(pki / "server.crt"), "key": str(key), "mode": "prefer"})
    master = start_on_a_terminal(pv)
    try:
        assert wait_for_port(pv.port, 15, pv.proc), pv.log_tail()
        key.write_bytes(encrypted.read_bytes())
        offset = len(pv.log_text())
        pv.signal(__import__("signal").SIGHUP)
        wait_until(lambda: "reload_failed" in pv.log_text()[offset:], 5,
                   message="the reload refused")
        assert "is encrypted with a passphrase" in pv.log_text()[offset:], pv.log_tail()
        with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/status", timeout=3) as r:
            assert r.status == 200  # the control thread is not waiting on the terminal
        assert b"pass phrase" not in terminal_output(master)
        with psycopg.connect(pv.dsn(sslmode="require"), autocommit=True) as c:
            assert one(c, "select 1") == 1  # the certificate in use stays
    finally:
        pv.stop()
        os.close(master)
    pv = Pgvalve(cluster, tmp_path / "start", mode="transaction", pool_size=1,
                 tls={"cert": str(pki / "server.crt"), "key": str(encrypted), "mode": "prefer"})
    master = start_on_a_terminal(pv)
    try:
        assert pv.wait_exit(5) == 1, terminal_output(master)
        assert "event=tls_failed" in pv.log_text(), pv.log_tail()
        assert "is encrypted with a passphrase" in pv.log_text(), pv.log_tail()
        assert b"pass phrase" not in terminal_output(master)
    finally:
        pv.stop()
        os.close(master)


def test_a_missing_certificate_stops_the_start(pgvalve, pki, cluster, tmp_path):
    from pgcluster import Pgvalve
    pv = Pgvalve(cluster, tmp_path / "pv", tls={"cert": str(tmp_path / "nope.crt"),
                                              "key": str(pki / "server.key"), "mode": "prefer"})
    with pytest.raises(RuntimeError):
        pv.start(timeout=5)
    assert "tls_failed" in pv.log_text() and "nope.crt" in pv.log_text()


# --- TLS to PostgreSQL (server_tls) --------------------------------------------------------

@pytest.fixture(scope="module")
def ssl_cluster(pki):
    """A primary with ssl = on and a certificate for 127.0.0.1 (plus one naming only another
    host, for verify-full's negative case)."""
    import shutil
    import tempfile
    from pgcluster import PgCluster, _chown_pg
    base = Path(tempfile.mkdtemp(prefix="pgvalve-it-tls-"))
    certs = base / "certs"
    certs.mkdir()
    make_cert(pki, "ca", "pg_ok", "postgres-test", "IP:127.0.0.1,DNS:localhost")
    make_cert(pki, "ca", "pg_wrong", "postgres-elsewhere", "DNS:db.elsewhere.example")
    for name in ("pg_ok", "pg_wrong"):
        for ext in ("crt", "key"):
            shutil.copy(pki / f"{name}.{ext}", certs / f"{name}.{ext}")
            _chown_pg(certs / f"{name}.{ext}")
        (certs / f"{name}.key").chmod(0o600)
    certs.chmod(0o755)
    _chown_pg(certs)
    c = PgCluster(replicas=0, base=str(base),
                  extra_conf=f"ssl = on\nssl_cert_file = '{certs}/pg_ok.crt'\n"
                             f"ssl_key_file = '{certs}/pg_ok.key'\n")
    c.start()
    c.certs = certs
    yield c
    c.teardown()


def pv_for(cluster, tmp_path, **overrides):
    from pgcluster import Pgvalve
    return Pgvalve(cluster, tmp_path / "pv", **overrides)


@pytest.mark.parametrize("mode", ["prefer", "require", "verify-ca", "verify-full"])
def test_server_tls_encrypts_the_link_to_postgresql(ssl_cluster, pki, tmp_path, mode):
    # prefer and require check no certificate: the server's comes from a CA pgvalve is not told
    # of, and the health checks must trust it as the server connections do (they used to give
    # libpq the system's CA bundle, which made it verify: the primary was marked down).
    ca = {"server_tls_ca": str(pki / "ca.crt")} if mode.startswith("verify") else {}
    pv = pv_for(ssl_cluster, tmp_path, mode="transaction", pool_size=1, max_overflow=0,
                server_tls=mode, health={"interval_ms": 100, "failures_before_down": 2},
                users=APP_AND_OPS, **ca).start()
    try:
        time.sleep(0.8)  # several health checks
        assert "event=host_down" not in pv.log_text(), pv.log_text()[-2000:]
        with pv.connect() as c:
            c.execute("create temp table t (x int) on commit drop")  # a write: needs the primary
            # SHOW SERVERS tells which server connections are encrypted.
            with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                                 autocommit=True) as a:
                cur = a.execute("SHOW SERVERS")
                cols = [d.name for d in cur.description]
                tls = [dict(zip(cols, r))["tls"] for r in cur.fetchall()]
            assert tls and all(t.startswith("TLSv1.") for t in tls), tls
            pid = one(c, "select pg_backend_pid()")
            ssl, version = ssl_cluster.primary.sql(
                f"select ssl, version from pg_stat_ssl where pid = {pid}", dbname="postgres")[0]
            assert ssl in (True, "t"), (ssl, version)
            assert version in ("TLSv1.2", "TLSv1.3")
            assert one(c, "select count(*) from generate_series(1, 100000)") == 100000
    finally:
        pv.stop()


def test_server_tls_verify_full_refuses_a_certificate_for_another_host(ssl_cluster, pki,
                                                                       tmp_path):
    for sql in (f"alter system set ssl_cert_file = '{ssl_cluster.certs}/pg_wrong.crt'",
                f"alter system set ssl_key_file = '{ssl_cluster.certs}/pg_wrong.key'",
                "select pg_reload_conf()"):
        ssl_cluster.primary.psql(sql)
    time.sleep(0.5)
    pv = pv_for(ssl_cluster, tmp_path, mode="transaction", pool_size=1,
                server_tls="verify-full", server_tls_ca=str(pki / "ca.crt")).start()
    try:
        with pytest.raises(psycopg.OperationalError) as ei:
            pv.connect()
        assert "TLS with server" in str(ei.value), ei.value
        log = pv.log_text()
        assert "event=server_tls_failed" in log and "server_tls=verify-full" in log, log[-2000:]
        assert re.search(r"hostname mismatch|IP address mismatch|certificate verify failed", log)
    finally:
        pv.stop()
        for sql in ("alter system reset ssl_cert_file", "alter system reset ssl_key_file",
                    "select pg_reload_conf()"):
            ssl_cluster.primary.psql(sql)
        time.sleep(0.5)


def test_server_tls_prefer_falls_back_to_plaintext_when_the_handshake_fails(ssl_cluster,
                                                                              tmp_path):
    # As libpq's sslmode=prefer: the server says 'S', but offers only TLS 1.1, which pgvalve
    # refuses; a new connection without TLS follows. require refuses.
    for sql in ("alter system set ssl_min_protocol_version = 'TLSv1'",
                "alter system set ssl_max_protocol_version = 'TLSv1.1'", "select pg_reload_conf()"):
        ssl_cluster.primary.psql(sql)
    time.sleep(0.5)
    try:
        pv = pv_for(ssl_cluster, tmp_path / "prefer", mode="transaction", pool_size=1,
                    server_tls="prefer").start()
        try:
            with pv.connect() as c:
                pid = one(c, "select pg_backend_pid()")
            ssl = ssl_cluster.primary.sql(f"select ssl from pg_stat_ssl where pid = {pid}",
                                          dbname="postgres")[0][0]
            assert ssl in (False, "f")
            assert re.search(r"event=server_tls_failed .*then=plaintext", pv.log_text())
            # The health checks fall back as the server connections do (SCRAM, no md5).
            time.sleep(0.5)
            assert "event=host_down" not in pv.log_text(), pv.log_text()[-2000:]
            assert "event=health_check_refused" not in pv.log_text(), pv.log_text()[-2000:]
        finally:
            pv.stop()
        pv = pv_for(ssl_cluster, tmp_path / "require", mode="transaction", pool_size=1,
                    server_tls="require").start()
        try:
            with pytest.raises(psycopg.OperationalError) as ei:
                pv.connect()
            assert "TLS with server" in str(ei.value), ei.value
        finally:
            pv.stop()
    finally:
        for sql in ("alter system reset ssl_min_protocol_version",
                    "alter system reset ssl_max_protocol_version", "select pg_reload_conf()"):
            ssl_cluster.primary.psql(sql)
        time.sleep(0.5)


def test_health_checks_send_no_md5_password_after_a_failed_tls_handshake(ssl_cluster,
                                                                             tmp_path):
    # The server says 'S' but offers only TLS 1.1 (refused), and asks for md5. pgvalve's own
    # server connections fall back to plaintext and refuse to answer md5 there; the health
    # checks (libpq, sslmode=prefer) used to fall back too and send the md5 hash in plaintext.
    hba = ssl_cluster.primary.datadir / "pg_hba.conf"
    scram_hba = hba.read_text()
    line = "127.0.0.1/32   scram-sha-256\n"
    assert scram_hba.count(line) == 2  # replication, then all
    for sql in ("alter system set ssl_min_protocol_version = 'TLSv1'",
                "alter system set ssl_max_protocol_version = 'TLSv1.1'",
                f"set password_encryption = 'md5'; alter role {APP_USER} password '{APP_PASSWORD}'"):
        ssl_cluster.primary.psql(sql)
    hba.write_text(scram_hba.replace(f"all           {line}", f"all           127.0.0.1/32   md5\n"))
    ssl_cluster.primary.psql("select pg_reload_conf()")
    time.sleep(0.5)
    try:
        pv = pv_for(ssl_cluster, tmp_path, mode="transaction", pool_size=1, server_tls="prefer",
                    health={"interval_ms": 100, "failures_before_down": 2}).start()
        try:
            with pytest.raises(psycopg.OperationalError) as ei:
                pv.connect()
            assert "md5" in str(ei.value) and "without TLS" in str(ei.value), ei.value
            wait_until(lambda: "event=health_check_refused" in pv.log_text(), 5,
                       message="the health check refused")
            line = next(l for l in pv.log_text().splitlines()
                        if "event=health_check_refused" in l)
            assert "md5 password over a connection without TLS" in line, line
            time.sleep(0.5)  # several more checks
            logged_in = ssl_cluster.primary.sql(
                "select a.application_name, s.ssl from pg_stat_activity a "
                "join pg_stat_ssl s using (pid) where a.usename = 'app'")
            assert logged_in == [], logged_in
        finally:
            pv.stop()
    finally:
        hba.write_text(scram_hba)
        for sql in ("alter system reset ssl_min_protocol_version",
                    "alter system reset ssl_max_protocol_version",
                    f"set password_encryption = 'scram-sha-256'; "
                    f"alter role {APP_USER} password '{APP_PASSWORD}'", "select pg_reload_conf()"):
            ssl_cluster.primary.psql(sql)
        time.sleep(0.5)


def test_a_reload_that_changes_server_tls_replaces_the_open_server_connections(ssl_cluster,
                                                                               tmp_path):
    # As PgBouncer does: a connection opened under the old rules (here in plaintext) does not
    # keep serving after the file asks for TLS.
    pv = pv_for(ssl_cluster, tmp_path, mode="transaction", pool_size=1, max_overflow=0,
                server_tls="disable").start()
    try:
        with pv.connect() as c:
            before = one(c, "select pg_backend_pid()")
            pv.config["server_tls"] = "require"
            pv.reload(pv.config)
            wait_until(lambda: "event=server_tls_changed" in pv.log_text(), 5,
                       message="the reload logged")
            after = one(c, "select pg_backend_pid()")
        assert after != before
        ssl = ssl_cluster.primary.sql(f"select ssl from pg_stat_ssl where pid = {after}",
                                      dbname="postgres")[0][0]
        assert ssl in (True, "t")
    finally:
        pv.stop()


def test_server_tls_require_refuses_a_server_without_tls(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=1, server_tls="require")  # the plain cluster
    with pytest.raises(psycopg.OperationalError) as ei:
        pv.connect()
    assert "does not offer TLS" in str(ei.value), ei.value
    pv2 = pgvalve(mode="transaction", pool_size=1, server_tls="prefer")
    with pv2.connect() as c:  # prefer falls back to plaintext
        assert one(c, "select 1") == 1


def test_a_tls_client_whose_connect_timeout_passes_while_its_login_waits_leaves_the_queue(
        pgvalve, pki):
    # libpq gives up at connect_timeout and closes: its login, waiting for a server (session
    # mode), leaves the queue and its client slot.
    from itutil import show_pools
    pv = pgvalve(mode="session", pool_size=1, max_overflow=0, checkout_timeout_ms=20000,
                 users=APP_AND_OPS, tls=tls_conf(pki, mode="prefer"))
    holder = pv.connect()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pv.dsn(sslmode="require", connect_timeout=2))
    wait_until(lambda: show_pools(pv)[0]["cl_waiting"] == "0", 5,
               message="the queue forgets the login that gave up")
    wait_until(lambda: pv.open_client_sockets() == 1, 5, message="its client slot is free")
    assert "event=client_left_while_waiting" in pv.log_text()  # it had waited
    holder.close()
    with pv.connect(sslmode="require") as c:
        assert c.execute("select 1").fetchone() == (1,)
    assert pv.log_text().count("event=client_login ") == 2
