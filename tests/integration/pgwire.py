"""A minimal raw PostgreSQL v3 wire client for tests that need exact bytes: malformed and
oversized messages, reading ErrorResponse fields before authentication, and closing the
socket abruptly without Terminate. Supports SCRAM-SHA-256, md5 and cleartext auth."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
import time

PROTOCOL_3_0 = 0x00030000


class PgWireError(Exception):
    """An ErrorResponse; .fields maps field codes ('C' = SQLSTATE, 'M' = message, ...)."""

    def __init__(self, fields: dict):
        self.fields = fields
        super().__init__(f"{fields.get('S', '?')} {fields.get('C', '?')}: {fields.get('M', '')}")

    @property
    def sqlstate(self):
        return self.fields.get("C")

    @property
    def message(self):
        return self.fields.get("M", "")


class ConnectionClosed(Exception):
    pass


def startup_packet(params: dict, version: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", version)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def query_message(sql: str | bytes) -> bytes:
    b = sql.encode() if isinstance(sql, str) else sql
    return message(b"Q", b + b"\0")


def parse_fields(payload: bytes) -> dict:
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionClosed(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = recv_exact(sock, 5)
    kind = header[:1]
    (length,) = struct.unpack("!I", header[1:])
    if length < 4 or length > 64 * 1024 * 1024:
        raise ValueError(f"bad message length {length} for type {kind!r}")
    return kind, recv_exact(sock, length - 4)


def read_error_then_close(sock: socket.socket, timeout: float) -> tuple[dict | None, bool, list]:
    """Read messages until the peer closes or `timeout` passes.
    Returns (fields of the first ErrorResponse or None, closed?, [message kinds seen])."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    err, kinds = None, []
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            header = recv_exact(sock, 5)
            kind = header[:1]
            (length,) = struct.unpack("!I", header[1:])
            if kind == b"E" and not 4 <= length <= 1024 * 1024:
                # a protocol-2.0 style error (PostgreSQL answers a 2.0 startup this way):
                # 'E' then a NUL-terminated text, no length word
                rest = header[1:]
                while not rest.endswith(b"\0"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    rest += chunk
                kinds.append(kind)
                if err is None:
                    err = {"v2": True, "M": rest.rstrip(b"\0").decode(errors="replace")}
                continue
            kind, payload = kind, recv_exact(sock, length - 4)
            kinds.append(kind)
            if kind == b"E" and err is None:
                err = parse_fields(payload)
    except ConnectionClosed:
        return err, True, kinds
    except ConnectionResetError:
        return err, True, kinds
    except socket.timeout:
        return err, False, kinds


class RawClient:
    """Connects, authenticates and runs simple queries with raw protocol messages."""

    def __init__(self, host: str, port: int, user: str, password: str, database: str,
                 params: dict | None = None, timeout: float = 10):
        self.host, self.port = host, port
        self.user, self.password, self.database = user, password, database
        self.params = params or {}
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.parameters: dict = {}
        self.backend_key: tuple[int, int] | None = None

    def open(self) -> socket.socket:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def connect(self) -> "RawClient":
        """Startup + authentication until ReadyForQuery. Raises PgWireError on ErrorResponse."""
        if self.sock is None:
            self.open()
        params = {"user": self.user, "database": self.database}
        params.update(self.params)
        self.sock.sendall(startup_packet(params))
        scram = None
        while True:
            kind, payload = read_message(self.sock)
            if kind == b"E":
                raise PgWireError(parse_fields(payload))
            if kind == b"R":
                (code,) = struct.unpack("!I", payload[:4])
                if code == 0:
                    continue
                if code == 3:  # cleartext
                    self.sock.sendall(message(b"p", self.password.encode() + b"\0"))
                elif code == 5:  # md5
                    salt = payload[4:8]
                    inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.sock.sendall(message(b"p", b"md5" + outer.encode() + b"\0"))
                elif code == 10:  # SASL
                    mechs = [m for m in payload[4:].split(b"\0") if m]
                    if b"SCRAM-SHA-256" not in mechs:
                        raise RuntimeError(f"no SCRAM-SHA-256 in {mechs}")
                    scram = _Scram(self.password)
                    first = scram.client_first().encode()
                    self.sock.sendall(message(
                        b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
                elif code == 11:  # SASLContinue
                    final = scram.client_final(payload[4:].decode())
                    self.sock.sendall(message(b"p", final.encode()))
                elif code == 12:  # SASLFinal
                    scram.verify_server(payload[4:].decode())
                else:
                    raise RuntimeError(f"unsupported auth code {code}")
            elif kind == b"S":
                k, v = payload.split(b"\0")[:2]
                self.parameters[k.decode()] = v.decode()
            elif kind == b"K":
                self.backend_key = struct.unpack("!II", payload[:8])
            elif kind == b"Z":
                return self
            # 'N' notices and anything else: ignore

    def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        """Send a simple Query; return all messages through ReadyForQuery.
        Raises PgWireError if an ErrorResponse came back (after reading through 'Z')."""
        self.sock.sendall(query_message(sql))
        msgs, err = [], None
        while True:
            kind, payload = read_message(self.sock)
            msgs.append((kind, payload))
            if kind == b"E" and err is None:
                err = parse_fields(payload)
            if kind == b"Z":
                break
        if err is not None:
            raise PgWireError(err)
        return msgs

    def rows(self, sql: str) -> list[list[str | None]]:
        out = []
        for kind, payload in self.query(sql):
            if kind == b"D":
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
                out.append(row)
        return out

    def transaction_status(self, msgs) -> str:
        for kind, payload in reversed(msgs):
            if kind == b"Z":
                return payload.decode()
        raise ValueError("no ReadyForQuery")

    def terminate(self):
        try:
            self.sock.sendall(message(b"X", b""))
        except OSError:
            pass
        self.sock.close()

    def close_abruptly(self, reset: bool = False):
        """Close the TCP connection without sending Terminate (reset=True sends RST)."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class _Scram:
    def __init__(self, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.client_first_bare = f"n=,r={self.nonce}"

    def client_first(self) -> str:
        return "n,," + self.client_first_bare

    def client_final(self, server_first: str) -> str:
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise RuntimeError("server nonce does not extend the client nonce")
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        self.auth_message = f"{self.client_first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, self.auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def verify_server(self, server_final: str):
        attrs = dict(kv.split("=", 1) for kv in server_final.split(","))
        expected = hmac.new(self.server_key, self.auth_message, hashlib.sha256).digest()
        if "v" not in attrs or base64.b64decode(attrs["v"]) != expected:
            raise RuntimeError(f"bad server signature in {server_final!r}")
