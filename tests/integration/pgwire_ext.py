"""Extended-query protocol on top of pgwire.RawClient, for tests that need exact control over
named statements: Parse / Bind / Describe / Execute / Close / Flush / Sync, sent one by one or
pipelined in a single write, with every answer read back through ReadyForQuery.

    c = ExtClient.login(pv)                             # logged in through pgvalve
    c.prepare("s1", "select $1::int * 2")               # Parse + Sync
    assert c.execute("s1", ["21"]) == [["42"]]          # Bind + Execute + Sync
    c.run([parse("s2", "select 1"), bind("s2"), execute(), sync()])  # one pipelined flight
    c.close_statement("s1")                             # Close + Sync
"""

from __future__ import annotations

import struct

from pgcluster import APP_DB, APP_PASSWORD, APP_USER
from pgwire import PgWireError, RawClient, message, parse_fields, query_message, read_message


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def parse(name: str, query: str, oids: list[int] | None = None) -> bytes:
    oids = oids or []
    return message(b"P", _cstr(name) + _cstr(query) + struct.pack("!H", len(oids))
                   + b"".join(struct.pack("!I", o) for o in oids))


def bind(statement: str, params: list[str | None] | None = None, portal: str = "") -> bytes:
    """Text-format parameters and results."""
    params = params or []
    body = _cstr(portal) + _cstr(statement) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            b = p.encode()
            body += struct.pack("!i", len(b)) + b
    body += struct.pack("!H", 0)
    return message(b"B", body)


def describe(kind: str, name: str) -> bytes:
    return message(b"D", kind.encode() + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", _cstr(portal) + struct.pack("!i", max_rows))


def close(kind: str, name: str) -> bytes:
    return message(b"C", kind.encode() + _cstr(name))


def sync() -> bytes:
    return message(b"S", b"")


def flush() -> bytes:
    return message(b"H", b"")


def data_row(payload: bytes) -> list[str | None]:
    (n,) = struct.unpack("!H", payload[:2])
    pos, row = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", payload[pos:pos + 4])
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(payload[pos:pos + ln].decode())
            pos += ln
    return row


class Reply:
    """Everything one flight got back, through ReadyForQuery."""

    def __init__(self, msgs: list[tuple[bytes, bytes]]):
        self.msgs = msgs
        self.kinds = b"".join(k for k, _ in msgs)
        self.rows = [data_row(p) for k, p in msgs if k == b"D"]
        self.errors = [parse_fields(p) for k, p in msgs if k == b"E"]
        self.tags = [p.rstrip(b"\0").decode() for k, p in msgs if k == b"C"]
        self.status = msgs[-1][1].decode() if msgs and msgs[-1][0] == b"Z" else None

    def raise_for_error(self) -> "Reply":
        if self.errors:
            raise PgWireError(self.errors[0])
        return self


class ExtClient(RawClient):
    @classmethod
    def login(cls, pv, user: str = APP_USER, password: str = APP_PASSWORD, dbname: str = APP_DB,
             timeout: float = 20, **params) -> "ExtClient":
        c = cls("127.0.0.1", pv.port, user, password, dbname, params=params, timeout=timeout)
        c.connect()
        return c

    def run(self, frames: list[bytes], syncs: int | None = None) -> Reply:
        """Send all frames in one write; read until as many ReadyForQuery as Syncs sent."""
        data = b"".join(frames)
        if syncs is None:
            syncs = sum(1 for f in frames if f[:1] in (b"S", b"Q"))
        assert syncs >= 1, "a flight without Sync gets no ReadyForQuery"
        self.sock.sendall(data)
        msgs = []
        while syncs:
            kind, payload = read_message(self.sock)
            msgs.append((kind, payload))
            if kind == b"Z":
                syncs -= 1
        return Reply(msgs)

    def prepare(self, name: str, query: str, oids: list[int] | None = None) -> Reply:
        r = self.run([parse(name, query, oids), sync()]).raise_for_error()
        assert r.kinds == b"1Z", r.kinds
        return r

    def execute(self, name: str, params: list[str | None] | None = None) -> list[list]:
        r = self.run([bind(name, params), execute(), sync()]).raise_for_error()
        assert r.kinds.startswith(b"2") and r.kinds.endswith(b"CZ"), r.kinds
        return r.rows

    def close_statement(self, name: str) -> Reply:
        r = self.run([close("S", name), sync()]).raise_for_error()
        assert r.kinds == b"3Z", r.kinds
        return r

    def simple(self, sql: str) -> Reply:
        return self.run([query_message(sql)])
