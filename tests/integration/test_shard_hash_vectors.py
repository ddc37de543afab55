"""tests/vectors/shard_hash.json against the outside schemes sharding.hash promises to match
(routing/shard_map.h): every vector is recomputed here with hashlib (md5_mod), python3-xxhash
(xxh3) and the cluster's PostgreSQL 15 (satisfies_hash_partition and the hash support functions
behind it), so a vector file that drifted from them cannot pass — the unit tests only hold
pgvalve's C++ to the file.

The PostgreSQL side runs on the primary as superuser, on hash-partitioned parents of its own
(no partitions needed: satisfies_hash_partition only reads the parent's key)."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import psycopg
import pytest
import xxhash

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "shard_hash.json"
HASH_PARTITION_SEED = 0x7A5B22367996DCFD  # src/include/catalog/partition.h
U64 = (1 << 64) - 1
CASTS = {"integer": "bigint", "text": "text", "uuid": "uuid"}
EXTENDED_HASH = {"integer": "hashint8extended", "text": "hashtextextended",
                 "uuid": "uuid_hash_extended"}


@pytest.fixture(scope="module")
def doc():
    return json.loads(VECTORS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pg(cluster):
    """A superuser connection on the primary, and the oids of parents partitioned BY HASH over
    each key kind's column type (int2 and int4 too, for the small integers)."""
    conn = cluster.primary.connect()
    conn.execute("CREATE SCHEMA shard_vectors")
    parents = {}
    for name, col in (("integer", "bigint"), ("text", "text"), ("uuid", "uuid"),
                      ("int4", "int4"), ("int2", "int2")):
        conn.execute(f"CREATE TABLE shard_vectors.p_{name} (k {col}) PARTITION BY HASH (k)")
        parents[name] = conn.execute(
            f"SELECT 'shard_vectors.p_{name}'::regclass::oid").fetchone()[0]
    yield conn, parents
    conn.execute("DROP SCHEMA shard_vectors CASCADE")
    conn.close()


def remainders(pg, parent: str, cast: str, value: str, modulus: int) -> list[int]:
    """Every r for which PostgreSQL puts `value` in partition (modulus, r)."""
    conn, parents = pg
    rows = conn.execute(
        "SELECT r FROM generate_series(0, %s - 1) r "
        f"WHERE satisfies_hash_partition(%s::oid, %s, r, %s::{cast})",
        (modulus, parents[parent], modulus, value)).fetchall()
    return [r for (r,) in rows]


def canonical_bytes(v: dict) -> bytes:
    if v["kind"] == "integer":
        return struct.pack("<q", int(v["canonical"]))
    return v["canonical"].encode()


def check_all(doc, check):
    """Runs check(vector) on every vector; reports all the ones that disagree at once."""
    bad = []
    for v in doc["vectors"]:
        problem = check(v)
        if problem:
            bad.append(f"{v['key']!r} as {v['key_type']}: {problem}")
    assert not bad, f"{len(bad)} vector(s) disagree:\n" + "\n".join(bad)


def test_vectors_cover_every_key_type_kind_and_edge(doc):
    vectors = doc["vectors"]
    assert len(vectors) >= 60
    assert {v["key_type"] for v in vectors} == {"auto", "bigint", "text", "uuid"}
    assert {v["kind"] for v in vectors} == {"integer", "text", "uuid"}
    assert doc["moduli"] == [2, 3, 4, 7, 16]
    integers = {int(v["canonical"]) for v in vectors if v["kind"] == "integer"}
    assert {0, 1, -1, 42, 2**31 - 1, 2**31, -2**31, 2**63 - 1, -2**63} <= integers
    texts = [v["canonical"] for v in vectors if v["kind"] == "text"]
    assert "" in texts and "007" in texts
    assert any(len(t.encode()) > 64 for t in texts)
    assert any(len(t.encode()) != len(t) for t in texts), "a multi-byte UTF-8 text"
    for v in vectors:
        assert set(v["md5_mod"]) == set(v["pg_partition"]) == {str(m) for m in doc["moduli"]}


def test_canonical_values_follow_the_key_type_rules(doc, pg):
    conn, _ = pg
    int_re = re.compile(r"[+-]?[0-9]+", re.ASCII)

    def check(v):
        key, key_type = v["key"], v["key_type"]
        if key_type in ("auto", "bigint"):
            # bigint skips whitespace around the integer, as PostgreSQL's int8in does.
            digits = key.strip(" \t\n\r\v\f") if key_type == "bigint" else key
            is_int = bool(int_re.fullmatch(digits)) and -2**63 <= int(digits) < 2**63
            want = ("integer", str(int(digits))) if is_int else ("text", key)
            if key_type == "bigint" and not is_int:
                return "not an integer, cannot be a bigint vector"
        elif key_type == "text":
            want = ("text", key)
        else:
            want = ("uuid", conn.execute("SELECT %s::uuid::text", (key,)).fetchone()[0])
        got = (v["kind"], v["canonical"])
        return None if got == want else f"{got} != {want}"

    check_all(doc, check)


def test_rejected_keys_are_not_values_of_their_type(doc, pg):
    conn, _ = pg
    int_re = re.compile(r"[+-]?[0-9]+", re.ASCII)
    for r in doc["rejects"]:
        key = r["key"]
        if r["key_type"] == "bigint":
            with pytest.raises((psycopg.errors.InvalidTextRepresentation,
                                psycopg.errors.NumericValueOutOfRange)):
                with conn.transaction():
                    conn.execute("SELECT %s::bigint", (key,))
        elif r["key_type"] == "auto":
            # An integer with whitespace around it: PostgreSQL's bigint takes it, text keeps the
            # whitespace, so auto cannot tell which it is.
            assert conn.execute("SELECT %s::bigint::text", (key,)).fetchone()[0] != key
            assert int_re.fullmatch(key.strip(" \t\n\r\v\f")), key
        else:
            assert r["key_type"] == "uuid"
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                with conn.transaction():
                    conn.execute("SELECT %s::uuid", (key,))


def test_xxh3_is_xxhash_of_the_canonical_bytes(doc):
    check_all(doc, lambda v: None if int(v["xxh3"], 16) == xxhash.xxh3_64_intdigest(
        canonical_bytes(v)) else f"xxh3 {v['xxh3']}")


def test_md5_mod_is_hashlib_md5_of_the_decimal_or_text(doc):
    def check(v):
        digest = int(hashlib.md5(v["canonical"].encode()).hexdigest(), 16)
        want = {str(m): digest % m for m in doc["moduli"]}
        return None if v["md5_mod"] == want else f"md5_mod {v['md5_mod']} != {want}"

    check_all(doc, check)


def test_pg_partition_is_where_postgres_puts_the_row(doc, pg):
    def check(v):
        cast = CASTS[v["kind"]]
        got = {m: remainders(pg, v["kind"], cast, v["canonical"], int(m))
               for m in v["pg_partition"]}
        want = {m: [r] for m, r in v["pg_partition"].items()}
        return None if got == want else f"satisfies_hash_partition gives {got}, file {want}"

    check_all(doc, check)


def test_pg_partition_hash_is_postgres_row_hash(doc, pg):
    """The raw hash is hash_combine64(0, <type>_hash_extended(key, HASH_PARTITION_SEED)), which
    for a first column is the support function's value plus 0x49a0f4dd15e5a8e3."""
    conn, _ = pg

    def check(v):
        fn, cast = EXTENDED_HASH[v["kind"]], CASTS[v["kind"]]
        h = conn.execute(f"SELECT {fn}(%s::{cast}, %s::bigint)",
                         (v["canonical"], HASH_PARTITION_SEED)).fetchone()[0] & U64
        want = (h + 0x49A0F4DD15E5A8E3) & U64
        got = int(v["pg_partition_hash"], 16)
        if got != want:
            return f"pg_partition_hash 0x{got:016x} != 0x{want:016x}"
        wrong = {m: r for m, r in v["pg_partition"].items() if got % int(m) != r}
        return f"hash % modulus disagrees with pg_partition at {wrong}" if wrong else None

    check_all(doc, check)


def test_small_integers_partition_alike_as_int2_and_int4(doc, pg):
    """shard_map.h promises int2/int4 keys hash as the int8 of the same value."""
    def check(v):
        if v["kind"] != "integer":
            return None
        n = int(v["canonical"])
        for parent, bits in (("int4", 32), ("int2", 16)):
            if -2**(bits - 1) <= n < 2**(bits - 1):
                for m, r in v["pg_partition"].items():
                    got = remainders(pg, parent, parent, v["canonical"], int(m))
                    if got != [r]:
                        return f"{parent} modulus {m}: {got} != [{r}]"
        return None

    check_all(doc, check)
