#!/usr/bin/python3
"""Writes tests/vectors/shard_hash.json, the frozen mappings of routing/shard_map.h (committed;
rerun only to add vectors: a changed expected value means rows would move).

Every expected value comes from an outside oracle, never from pgvalve's code:
  xxh3          python3-xxhash: xxh3_64_intdigest of the canonical bytes (an integer as
                struct.pack('<q'), text as UTF-8, a uuid as its lower-case hyphenated text)
  md5_mod       hashlib: int(md5(str(key)).hexdigest(), 16) % modulus
  pg_partition  a real PostgreSQL 15: the remainder r for which
                satisfies_hash_partition(parent, modulus, r, key) holds, on tables
                PARTITION BY HASH over a bigint, a text and a uuid column; the raw row hash is
                hash_combine64(0, hashint8extended / hashtextextended / uuid_hash_extended(key,
                HASH_PARTITION_SEED)), and must give those remainders.
  uuid text     PostgreSQL's uuid input and output ('...'::uuid::text)

Needs PostgreSQL 15's server binaries (PG_BIN, default /usr/lib/postgresql/15/bin), psycopg
and python3-xxhash; as root the server runs as `postgres`. It starts a throwaway server in a
temporary directory on a free loopback port (tests/integration/pgcluster.py) and stops it.

    /usr/bin/python3 tests/vectors/make_shard_hash_vectors.py [--check]

--check compares with the committed file instead of writing it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
import sys
import uuid
from pathlib import Path

import psycopg
import xxhash

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

from pgcluster import PgCluster  # noqa: E402

OUT = HERE / "shard_hash.json"
MODULI = [2, 3, 4, 7, 16]
HASH_PARTITION_SEED = 0x7A5B22367996DCFD  # src/include/catalog/partition.h
U64 = (1 << 64) - 1

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
WHITESPACE = " \t\n\r\v\f"  # PostgreSQL's isspace() in the C locale

# (key text, key_type). Keys must be valid UTF-8 without NUL: PostgreSQL is the oracle.
INTEGERS = [
    "0", "1", "-1", "2", "7", "42", "-42", "100", "1000", "65535", "65536",
    "2147483647", "2147483648", "-2147483648", "-2147483649", "4294967295", "4294967296",
    "9223372036854775807", "-9223372036854775808", "9223372036854775806",
    "1099511627776", "1234567890123", "-987654321098", "8675309", "31337",
    "6022140857747474", "-7777777777777777777", "5764607523034234879",
]
AUTO = [
    "007", "+42", "-0", "+0", "00000000000000000000042", "-00000000000000000001", "123456",
    "9223372036854775808", "-9223372036854775809", "99999999999999999999", "12a", "hello",
    "", "1e3", "+", "-", "--1", "0x1F", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
]
# bigint keys with whitespace around them, which PostgreSQL's int8in skips.
PADDED_INTEGERS = [" 42", "42 ", "\t-7\n", " +0 "]
TEXTS = [
    "", "a", "abc", "hello world", "007", "42", "-1", "abc ", " 42", "42 ", "user@example.com",
    "Ünïcödé", "日本語テキスト", "emoji 🐘🚀", "tab\there", "line\nbreak", "'quoted'",
    "device-000001", "DEVICE-000001",
] + [ALPHABET[:n] for n in (5, 7, 8, 9, 10, 11, 12, 13, 17, 24, 25, 36)] + [
    (ALPHABET * 4)[:65], (ALPHABET * 4)[:100], (ALPHABET * 8)[:129], (ALPHABET * 8)[:241],
    "ü" * 70, (ALPHABET * 30)[:1000],
]
UUIDS = [
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
    "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
    "a0eebc999c0b4ef8bb6d6bb9bd380a11",
    "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
    "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "123e4567-e89b-12d3-a456-426614174000",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "01890a5d-ac96-774b-bcce-b302099a8057",
]
# Not a value of the key type: key_from_text must give nothing.
REJECTS = [
    ("", "bigint"), ("abc", "bigint"), (" ", "bigint"), ("4 2", "bigint"), ("+", "bigint"),
    # auto: 42 in a bigint column, " 42" in a text one; which, auto cannot tell.
    (" 42", "auto"), ("42 ", "auto"), ("\t-7\n", "auto"),
    ("1.0", "bigint"), ("9223372036854775808", "bigint"), ("-9223372036854775809", "bigint"),
    ("", "uuid"), ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "uuid"),
    ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111", "uuid"),
    ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g", "uuid"),
    ("a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11", "uuid"),
    ("a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11", "uuid"),
    ("-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "uuid"),
    ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-", "uuid"),
    ("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "uuid"),
    ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "uuid"),
    (" a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "uuid"),
]

INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)


def as_int64(key: str) -> int | None:
    """DESIGN.md's integer: an optional sign and ASCII digits, within int64."""
    if not INT_RE.fullmatch(key):
        return None
    v = int(key)
    return v if -(1 << 63) <= v < (1 << 63) else None


def hash_combine64(a: int, b: int) -> int:
    """src/include/common/hashfn.h, in uint64 arithmetic."""
    a ^= (b + 0x49A0F4DD15E5A8E3 + (a << 54) + (a >> 7)) & U64
    return a & U64


class Postgres:
    def __init__(self):
        self.cluster = PgCluster(replicas=0)

    def __enter__(self):
        self.cluster.start()
        self.conn = self.cluster.primary.connect()
        for name, col in (("pb", "bigint"), ("pt", "text"), ("pu", "uuid")):
            self.conn.execute(f"CREATE TABLE {name} (k {col}) PARTITION BY HASH (k)")
        self.parent = {kind: self.scalar(f"SELECT '{name}'::regclass::oid")
                       for kind, name in (("integer", "pb"), ("text", "pt"), ("uuid", "pu"))}
        return self

    def __exit__(self, *exc):
        try:
            self.conn.close()
        finally:
            self.cluster.teardown()

    def scalar(self, sql, params=None):
        return self.conn.execute(sql, params).fetchone()[0]

    def uuid_text(self, key: str) -> str | None:
        try:
            with self.conn.transaction():
                return self.scalar("SELECT %s::uuid::text", (key,))
        except psycopg.errors.InvalidTextRepresentation:
            return None

    def raw_hash(self, kind: str, canonical: str) -> int:
        fn, cast = {"integer": ("hashint8extended", "bigint"),
                    "text": ("hashtextextended", "text"),
                    "uuid": ("uuid_hash_extended", "uuid")}[kind]
        h = self.scalar(f"SELECT {fn}(%s::{cast}, %s::bigint)", (canonical, HASH_PARTITION_SEED))
        return hash_combine64(0, h & U64)

    def remainder(self, kind: str, canonical: str, modulus: int) -> int:
        cast = {"integer": "bigint", "text": "text", "uuid": "uuid"}[kind]
        rows = self.conn.execute(
            "SELECT r FROM generate_series(0, %s - 1) r "
            f"WHERE satisfies_hash_partition(%s::oid, %s, r, %s::{cast})",
            (modulus, self.parent[kind], modulus, canonical)).fetchall()
        assert len(rows) == 1, (kind, canonical, modulus, rows)
        return rows[0][0]


def canonical_of(pg: Postgres, key: str, key_type: str) -> tuple[str, str] | None:
    """(kind, canonical text) of `key` read as `key_type`, or None: not a value of it."""
    if key_type in ("auto", "bigint"):
        v = as_int64(key.strip(WHITESPACE) if key_type == "bigint" else key)
        if v is not None:
            return "integer", str(v)
        if key_type == "auto" and key.strip(WHITESPACE) != key and \
                as_int64(key.strip(WHITESPACE)) is not None:
            return None
        return ("text", key) if key_type == "auto" else None
    if key_type == "text":
        return "text", key
    u = pg.uuid_text(key)
    return ("uuid", u) if u is not None else None


def canonical_bytes(kind: str, canonical: str) -> bytes:
    if kind == "integer":
        return struct.pack("<q", int(canonical))
    return canonical.encode()


def vector(pg: Postgres, key: str, key_type: str) -> dict:
    kind, canonical = canonical_of(pg, key, key_type)
    if kind == "uuid":
        assert str(uuid.UUID(canonical)) == canonical  # and PostgreSQL's own text agrees
    md5 = int(hashlib.md5(canonical.encode()).hexdigest(), 16)
    raw = pg.raw_hash(kind, canonical)
    pg_rem = {str(m): pg.remainder(kind, canonical, m) for m in MODULI}
    for m in MODULI:
        assert raw % m == pg_rem[str(m)], (key, key_type, m, hex(raw), pg_rem)
    return {
        "key": key,
        "key_type": key_type,
        "kind": kind,
        "canonical": canonical,
        "xxh3": f"0x{xxhash.xxh3_64_intdigest(canonical_bytes(kind, canonical)):016x}",
        "md5_mod": {str(m): md5 % m for m in MODULI},
        "pg_partition_hash": f"0x{raw:016x}",
        "pg_partition": pg_rem,
    }


def build() -> dict:
    cases = ([(k, "bigint") for k in INTEGERS + PADDED_INTEGERS] + [(k, "auto") for k in AUTO]
             + [(k, "text") for k in TEXTS] + [(k, "uuid") for k in UUIDS])
    with Postgres() as pg:
        vectors = [vector(pg, k, t) for k, t in cases]
        for key, key_type in REJECTS:
            assert canonical_of(pg, key, key_type) is None, (key, key_type)
    return {
        "about": "Frozen shard-key mappings of routing/shard_map.h; generated by "
                 "make_shard_hash_vectors.py from hashlib, python3-xxhash and PostgreSQL 15. "
                 "Do not edit by hand.",
        "moduli": MODULI,
        "hash_partition_seed": f"0x{HASH_PARTITION_SEED:016x}",
        "vectors": vectors,
        "rejects": [{"key": k, "key_type": t} for k, t in REJECTS],
    }


def render(doc: dict) -> str:
    """JSON with one vector per line, so that a diff shows which keys changed."""
    def dump(v):
        return json.dumps(v, ensure_ascii=False)
    lines = ["{"]
    for name, value in doc.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"  {dump(x)}" for x in value)
            lines.append(f" {dump(name)}: [\n{items}\n ],")
        else:
            lines.append(f" {dump(name)}: {dump(value)},")
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file")
    args = ap.parse_args()
    text = render(build())
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} differs from what the oracles give", file=sys.stderr)
            return 1
        print(f"{OUT}: up to date")
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
