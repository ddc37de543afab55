"""Hardened logins (issue 7): an unknown user goes through the same SCRAM exchange as a known
one and fails the same way (no user-name probing); failed logins from one address are answered
more and more slowly; towards PostgreSQL, AuthenticationOk is believed only after the server's
SCRAM signature, iteration counts are capped, and cleartext or md5 is refused over a link
without TLS unless server_allow_insecure_auth says otherwise. The server side is played by a
small fake PostgreSQL here, since a real one never misbehaves."""

import base64
import socket
import struct
import threading
import time

import pytest

from itutil import APP_AND_OPS, OPS_USER
from pgcluster import APP_DB, APP_PASSWORD, APP_USER
from pgwire import PgWireError, RawClient, message, read_message, recv_exact
from test_limits import assert_pgvalve_message


def sasl_server_first(pv, user):
    """Starts a login as `user` and returns pgvalve's SCRAM server-first-message."""
    r = RawClient("127.0.0.1", pv.port, user, "x", APP_DB, timeout=5)
    s = r.open()
    from pgwire import startup_packet
    s.sendall(startup_packet({"user": user, "database": APP_DB}))
    kind, payload = read_message(s)
    assert kind == b"R" and struct.unpack("!I", payload[:4])[0] == 10, (kind, payload)
    first = b"n,,n=,r=clientnonce123"
    s.sendall(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
    kind, payload = read_message(s)
    assert kind == b"R" and struct.unpack("!I", payload[:4])[0] == 11, (kind, payload)
    s.close()
    return dict(kv.split("=", 1) for kv in payload[4:].decode().split(","))


def login_error(pv, user, password):
    r = RawClient("127.0.0.1", pv.port, user, password, APP_DB, timeout=15)
    t0 = time.monotonic()
    with pytest.raises(PgWireError) as ei:
        r.connect()
    r.sock.close()
    return ei.value, time.monotonic() - t0


def test_unknown_user_cannot_be_told_from_a_wrong_password(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=1)
    ghost1, ghost2 = sasl_server_first(pv, "ghost"), sasl_server_first(pv, "ghost")
    assert ghost1["s"] == ghost2["s"] and ghost1["i"] == "4096"  # stable, like a real user's
    assert sasl_server_first(pv, "phantom")["s"] != ghost1["s"]
    assert len(base64.b64decode(ghost1["s"])) == 16
    known, _ = login_error(pv, APP_USER, "wrong")
    unknown, _ = login_error(pv, "ghost", "wrong")
    assert known.sqlstate == unknown.sqlstate == "28P01"
    assert known.message.replace(APP_USER, "U") == unknown.message.replace("ghost", "U")
    assert_pgvalve_message(unknown.message)


def test_failed_logins_from_one_address_slow_down(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=1)
    times = [login_error(pv, APP_USER, "wrong")[1] for _ in range(6)]
    assert max(times[:3]) < 0.5, times                  # the first three are free
    assert times[3] >= 0.1 and times[5] >= 0.4, times  # then 0.1 s, 0.2 s, 0.4 s, ...
    # The user's success forgets them.
    RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=10).connect()
    assert login_error(pv, APP_USER, "wrong")[1] < 0.5


def test_another_users_login_does_not_reset_a_users_failures(pgvalve):
    """Failures are counted per address and user: with one known application password, logging
    in with it between guesses of another user's password reset the count, and the guesses ran
    at full speed."""
    pv = pgvalve(mode="transaction", pool_size=1, users=APP_AND_OPS)
    times = [login_error(pv, OPS_USER, "guess%d" % i)[1] for i in range(5)]
    assert max(times[:3]) < 0.5 and times[4] >= 0.2, times
    for i in range(3):
        RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=10).connect()
        err, took = login_error(pv, OPS_USER, "guess%d" % (5 + i))
        assert err.sqlstate == "28P01", err.fields
        assert took >= 0.4 * 2 ** i * 0.9, (i, took)  # 0.4 s, 0.8 s, 1.6 s: not reset
    # The application's own logins were not slowed by ops's failures.
    t0 = time.monotonic()
    RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=10).connect()
    assert time.monotonic() - t0 < 0.5


def test_parallel_guesses_of_a_failing_user_are_answered_one_at_a_time(pgvalve):
    """Once a user fails from an address, its unanswered logins from there count: guesses sent
    on parallel connections were each delayed on their own and all answered within 5 s."""
    pv = pgvalve(mode="transaction", pool_size=1, users=APP_AND_OPS,
                 limits={"auth_timeout_ms": 7000})
    for i in range(4):
        login_error(pv, OPS_USER, "warm%d" % i)  # 0, 0, 0, 0.1 s: the next waits 0.2 s
    results = []

    def guess(i):
        r = RawClient("127.0.0.1", pv.port, OPS_USER, "p%d" % i, APP_DB, timeout=15)
        t0 = time.monotonic()
        try:
            r.connect()
            results.append(("OK", None, time.monotonic() - t0))
        except PgWireError as e:
            results.append((e.sqlstate, e.message, time.monotonic() - t0))
        except (OSError, EOFError) as e:
            results.append(("closed", repr(e), time.monotonic() - t0))
        finally:
            if r.sock:
                r.sock.close()

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 20, results
    answered = sorted(took for state, _, took in results if state == "28P01")
    # One at a time, each after the one before: 0.2, 0.4, 0.8, 1.6, 3.2 s (about 6.2 s).
    assert 3 <= len(answered) <= 6, results
    assert answered[-1] >= 2.5, answered
    # The others were told, once their login time ran out, why they were not checked.
    waited = [(state, msg) for state, msg, _ in results if state != "28P01"]
    assert waited, results
    for state, msg in waited:
        assert state == "53300", waited
        assert_pgvalve_message(msg)
        assert f'user "{OPS_USER}"' in msg and "one at a time" in msg, msg
    # Another user is not held back meanwhile.
    t0 = time.monotonic()
    RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=10).connect()
    assert time.monotonic() - t0 < 0.5


def test_the_failed_login_delay_ends_at_auth_timeout_with_one_error(pgvalve):
    """Found by a review: with auth_timeout_ms: 300 the sixth failed login (0.4 s of delay) got
    28P01 and then a second FATAL, 08P01 authentication timed out. The delay ends at the
    login's deadline, and the client gets the one error."""
    from pgwire import read_error_then_close
    pv = pgvalve(mode="transaction", pool_size=1, limits={"auth_timeout_ms": 300})
    for _ in range(5):  # free, free, free, 0.1 s, 0.2 s
        login_error(pv, APP_USER, "wrong")
    r = RawClient("127.0.0.1", pv.port, APP_USER, "wrong", APP_DB, timeout=5)
    s = r.open()
    t0 = time.monotonic()
    from pgwire import startup_packet
    s.sendall(startup_packet({"user": APP_USER, "database": APP_DB}))
    kind, payload = read_message(s)
    assert kind == b"R" and struct.unpack("!I", payload[:4])[0] == 10, (kind, payload)
    first = b"n,,n=,r=clientnonce123"
    s.sendall(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
    kind, payload = read_message(s)
    server_first = payload[4:].decode()
    nonce = dict(kv.split("=", 1) for kv in server_first.split(","))["r"]
    proof = base64.b64encode(b"\0" * 32).decode()
    s.sendall(message(b"p", f"c=biws,r={nonce},p={proof}".encode()))
    err, closed, kinds = read_error_then_close(s, 5)
    elapsed = time.monotonic() - t0
    s.close()
    assert closed and kinds == [b"E"], kinds
    assert err["C"] == "28P01", err
    assert elapsed < 0.3 + 0.25, elapsed  # at the deadline, not 0.4 s after the proof
    time.sleep(0.2)
    assert "authentication timed out" not in pv.log_text(), pv.log_text()[-2000:]


@pytest.mark.parametrize("body", [b"SCRAM-SHA-256\0\0\0", b"SCRAM-SHA-256\0\0\0\0\x09abc",
                                  b"SCRAM-SHA-256"], ids=["short_length", "long_length", "no_nul"])
def test_a_malformed_sasl_initial_response_is_08P01(pgvalve, body):
    """Found by a review: a SASLInitialResponse that cannot be read got 28000 unsupported SASL
    mechanism; it is a protocol violation (08P01, as from PostgreSQL)."""
    from pgwire import parse_fields, read_error_then_close, startup_packet
    pv = pgvalve(mode="transaction", pool_size=1)
    s = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=5).open()
    s.sendall(startup_packet({"user": APP_USER, "database": APP_DB}))
    kind, payload = read_message(s)
    assert kind == b"R" and struct.unpack("!I", payload[:4])[0] == 10, (kind, payload)
    s.sendall(message(b"p", body))
    err, closed, kinds = read_error_then_close(s, 5)
    s.close()
    assert err is not None and err["C"] == "08P01", (err, kinds)
    assert_pgvalve_message(err["M"])
    assert "malformed SASLInitialResponse" in err["M"], err
    assert closed


class FakeServer:
    """Accepts one connection at a time, reads the startup packet and plays `script`."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.settimeout(10)
                (length,) = struct.unpack("!I", recv_exact(c, 4))
                body = recv_exact(c, length - 4)
                if body == struct.pack("!I", 80877103):  # SSLRequest (server_tls: prefer)
                    c.sendall(b"N")
                    (length,) = struct.unpack("!I", recv_exact(c, 4))
                    recv_exact(c, length - 4)
                self.script(self, c)
            except Exception:
                pass
            finally:
                c.close()

    def close(self):
        self.sock.close()


def auth(code, data=b""):
    return message(b"R", struct.pack("!I", code) + data)


def stop_with_error(c, text):
    c.sendall(message(b"E", b"SFATAL\0C28000\0M" + text.encode() + b"\0\0"))


def skip_signature(server, c):
    c.sendall(auth(10, b"SCRAM-SHA-256\0\0"))
    kind, payload = read_message(c)
    client_first = payload[len(b"SCRAM-SHA-256\0") + 4:].decode()
    nonce = client_first.split("r=", 1)[1]
    salt = base64.b64encode(b"0123456789abcdef").decode()
    c.sendall(auth(11, f"r={nonce}server,s={salt},i=4096".encode()))
    read_message(c)  # the client's proof
    c.sendall(auth(0))  # AuthenticationOk with no SASLFinal: an impostor
    time.sleep(0.5)


def huge_iterations(server, c):
    c.sendall(auth(10, b"SCRAM-SHA-256\0\0"))
    kind, payload = read_message(c)
    nonce = payload[len(b"SCRAM-SHA-256\0") + 4:].decode().split("r=", 1)[1]
    salt = base64.b64encode(b"0123456789abcdef").decode()
    c.sendall(auth(11, f"r={nonce}server,s={salt},i=2000000000".encode()))
    time.sleep(0.5)


def asks_cleartext(server, c):
    c.sendall(auth(3))
    try:
        kind, payload = read_message(c)
        server.received.append((kind, payload))
        stop_with_error(c, "fake server stops here")
    except Exception:
        pass


def pv_on(pgvalve, fake, **kw):
    return pgvalve(mode="transaction", pool_size=1, max_overflow=0,
                   users=[{"name": APP_USER, "password": APP_PASSWORD}],
                   databases={APP_DB: {"shards": [{"name": "s0",
                                                   "primary": f"127.0.0.1:{fake.port}"}]}},
                   **kw)


@pytest.mark.parametrize("script,fragment", [
    (skip_signature, "no server signature"),
    (huge_iterations, "iteration count 2000000000"),
    (asks_cleartext, "server_allow_insecure_auth"),
])
def test_server_login_refuses_what_a_real_server_never_does(pgvalve, script, fragment):
    fake = FakeServer(script)
    try:
        pv = pv_on(pgvalve, fake)
        t0 = time.monotonic()
        err, _ = login_error(pv, APP_USER, APP_PASSWORD)
        assert time.monotonic() - t0 < 10
        assert fragment in err.message, err.message
        assert_pgvalve_message(err.message)
        assert not fake.received  # the password never went out
    finally:
        fake.close()


def test_cleartext_to_the_server_when_the_config_allows_it(pgvalve):
    fake = FakeServer(asks_cleartext)
    try:
        pv = pv_on(pgvalve, fake, server_allow_insecure_auth=True)
        err, _ = login_error(pv, APP_USER, APP_PASSWORD)
        assert "fake server stops here" in err.message, err.message
        assert fake.received and fake.received[0][0] == b"p"
        assert fake.received[0][1] == APP_PASSWORD.encode() + b"\0"
    finally:
        fake.close()


def test_non_ascii_passwords_are_saslprepped_on_both_legs(pgvalve, cluster):
    """libpq and PostgreSQL SASLprep a password before SCRAM; pgvalve must too, on its client
    side (a verifier made from a plain-text password) and towards the server, or a password
    that normalisation changes (a decomposed umlaut, a no-break space, a soft hyphen) fails."""
    password = "pa\u0308ss\u00a0wo\u0308rd\u00ad!"
    cluster.primary.sql("drop role if exists saslprep_user")
    cluster.primary.sql(f"create role saslprep_user login password '{password}'")
    cluster.primary.sql(f"grant connect on database {APP_DB} to saslprep_user")
    pv = pgvalve(mode="transaction", pool_size=1,
                 users=[{"name": APP_USER, "password": APP_PASSWORD},
                        {"name": "saslprep_user", "password": password}])
    import psycopg
    with psycopg.connect(host="127.0.0.1", port=pv.port, dbname=APP_DB, user="saslprep_user",
                         password=password, autocommit=True) as c:
        assert c.execute("select current_user").fetchone()[0] == "saslprep_user"
    # The normalised form is the same password to everyone.
    with psycopg.connect(host="127.0.0.1", port=pv.port, dbname=APP_DB, user="saslprep_user",
                         password="p\u00e4ss wo\u0308rd!", autocommit=True) as c:
        assert c.execute("select 1").fetchone()[0] == 1


def test_a_newer_protocol_or_protocol_options_get_negotiated_down_to_3_0(pgvalve, cluster):
    """Found by a code review: a StartupMessage asking for protocol 3.2, or carrying `_pq_.`
    options, was taken as 3.0 without a word and the option sent to the server as a setting.
    As PostgreSQL does, pgvalve answers NegotiateProtocolVersion (3.0, the options it does not
    serve) and the login goes on; the option is no setting."""
    from pgwire import startup_packet

    pv = pgvalve(mode="transaction", pool_size=2)
    for port in (cluster.primary.port, pv.port):  # PostgreSQL itself, then pgvalve
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(startup_packet({"user": APP_USER, "database": APP_DB, "_pq_.foo": "bar"},
                                     (3 << 16) | 2))
            kind, payload = read_message(s)
            assert kind == b"v", (port, kind, payload)
            newest, count = struct.unpack("!II", payload[:8])
            assert (newest, count, payload[8:]) == ((3 << 16), 1, b"_pq_.foo\0"), port
            kind, payload = read_message(s)
            assert kind == b"R", (port, kind, payload)  # authentication goes on
    c = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB,
                  params={"_pq_.foo": "bar"}).connect()
    try:
        with pytest.raises(PgWireError) as e:
            c.rows('SHOW "_pq_.foo"')
        assert e.value.sqlstate == "42704"
    finally:
        c.terminate()


def test_ssl_and_gss_requests_are_answered_once_each(pgvalve):
    """PostgreSQL takes each of SSLRequest and GSSENCRequest once before the StartupMessage; a
    client repeating them got N for ever (bounded only by auth_timeout_ms)."""
    pv = pgvalve(mode="transaction", pool_size=2)
    with socket.create_connection(("127.0.0.1", pv.port), timeout=5) as s:
        for code in (80877104, 80877103):  # GSS, then SSL: each once, as libpq may
            s.sendall(struct.pack("!II", 8, code))
            assert recv_exact(s, 1) == b"N"
        s.sendall(struct.pack("!II", 8, 80877103))
        kind, payload = read_message(s)
        assert kind == b"E" and b"C08P01\0" in payload, payload
        assert_pgvalve_message(dict((f[:1], f[1:]) for f in payload.split(b"\0") if f)
                               [b"M"].decode())


@pytest.mark.parametrize("value", ["no", "N", "false", "Off", "0"])
def test_replication_false_in_any_spelling_logs_in(pgvalve, value):
    pv = pgvalve(mode="transaction", pool_size=2)
    c = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB,
                  params={"replication": value}).connect()
    try:
        assert c.rows("select 1") == [["1"]]
    finally:
        c.terminate()


def scram_verifier(password, iterations, salt=b"pgvalve-it-salt!"):
    import hashlib
    import hmac
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def first_auth_request(pv, user):
    """The code of the first authentication request pgvalve sends `user` (5 md5, 10 SASL)."""
    from pgwire import startup_packet
    s = socket.create_connection(("127.0.0.1", pv.port), timeout=5)
    try:
        s.sendall(startup_packet({"user": user, "database": APP_DB}))
        kind, payload = read_message(s)
        assert kind == b"R", (kind, payload)
        return struct.unpack("!I", payload[:4])[0]
    finally:
        s.close()


def test_an_unknown_name_gets_the_method_most_users_have(pgvalve):
    """Where most users have md5 hashes, an unknown name is asked for md5 too (it was asked for
    SCRAM, which told every md5 user's name apart from a made-up one), and fails the same way."""
    import hashlib
    md5 = lambda pw, user: "md5" + hashlib.md5((pw + user).encode()).hexdigest()  # noqa: E731
    pv = pgvalve(mode="transaction", pool_size=1, users=[
        {"name": APP_USER, "password": md5(APP_PASSWORD, APP_USER),
         "server_password": APP_PASSWORD},
        {"name": "meter", "password": md5("m", "meter"), "server_password": "m"},
        {"name": "ops", "password": "ops-secret"}])
    assert first_auth_request(pv, APP_USER) == 5
    assert first_auth_request(pv, "ghost") == 5
    RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=10).connect()
    known, _ = login_error(pv, APP_USER, "wrong")
    unknown, _ = login_error(pv, "ghost", "wrong")
    assert known.sqlstate == unknown.sqlstate == "28P01"
    assert known.message.replace(APP_USER, "U") == unknown.message.replace("ghost", "U")


def test_an_unknown_name_gets_the_iteration_count_most_users_have(pgvalve):
    """SCRAM verifiers made with another iteration count than 4096 (PostgreSQL's
    scram_iterations): an unknown name's exchange shows the same count, not 4096."""
    pv = pgvalve(mode="transaction", pool_size=1, users=[
        {"name": APP_USER, "password": scram_verifier(APP_PASSWORD, 10000),
         "server_password": APP_PASSWORD},
        {"name": "meter", "password": scram_verifier("m", 10000), "server_password": "m"}])
    assert sasl_server_first(pv, APP_USER)["i"] == "10000"
    assert sasl_server_first(pv, "ghost")["i"] == "10000"
    RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=10).connect()


def test_a_verifier_a_login_cannot_decode_is_refused_at_check(tmp_path):
    """A SCRAM verifier of the right shape whose keys do not decode to 32 bytes loaded, and each
    login as its user failed right after the client's first SCRAM message (an unknown name's
    fails at the proof), which told the name apart; such a file is refused now."""
    import subprocess

    from conftest import pgvalve_binary
    good = scram_verifier("pw", 4096)
    broken = good[:good.rindex(":") - 1] + "A" + good[good.rindex(":"):]  # StoredKey's padding
    path = tmp_path / "broken.yaml"
    path.write_text(f"""listen: 127.0.0.1:1
users:
  - name: app
    password: "{broken}"
    server_password: pw
databases:
  telemetry:
    shards:
      - name: s0
        primary: 127.0.0.1:2
""")
    r = subprocess.run([pgvalve_binary(), "--config", str(path), "--check"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "users[0].password" in r.stderr and "malformed SCRAM verifier" in r.stderr, r.stderr
    path.write_text(path.read_text().replace(broken, good))
    r = subprocess.run([pgvalve_binary(), "--config", str(path), "--check"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_login_that_sends_no_proof_holds_no_turn(pgvalve):
    """Logins of a user that failed from an address are checked one at a time from the moment
    their proof arrives: a connection that sends its startup packet as that user and then
    nothing does not hold the user's turn (the right password waited for its auth_timeout_ms,
    2.8 s of 3, and connections renewed every 0.25 s locked the user out with 53300)."""
    import socket
    from pgwire import RawClient, startup_packet
    pv = pgvalve(mode="transaction", pool_size=1, limits={"auth_timeout_ms": 3000})
    for _ in range(3):
        login_error(pv, APP_USER, "wrong")  # the free failures
    stalled = socket.create_connection(("127.0.0.1", pv.port), timeout=10)
    try:
        stalled.sendall(startup_packet({"user": APP_USER, "database": APP_DB}))
        time.sleep(0.2)
        started = time.monotonic()
        RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=10).connect()
        assert time.monotonic() - started < 1.5, "the right password waited for the stalled login"
    finally:
        stalled.close()
