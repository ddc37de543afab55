"""Lists of PostgreSQL's catalog that pgvalve carries in its source, checked against a live
PostgreSQL 15: a list that drifts from the server would make pgvalve misjudge a statement."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_aggregates_match_pg_proc(cluster):
    source = (ROOT / "routing" / "scatter_plan.cpp").read_text()
    block = re.search(r"kAggregates\[\] = \{(.*?)\};", source, re.S).group(1)
    listed = set(re.findall(r'"([a-z_0-9]+)"', block))
    with cluster.primary.connect() as conn:
        catalog = {r[0] for r in conn.execute(
            "SELECT DISTINCT proname FROM pg_proc "
            "WHERE prokind = 'a' AND pronamespace = 'pg_catalog'::regnamespace").fetchall()}
    assert listed == catalog, (f"missing: {sorted(catalog - listed)}, "
                               f"not aggregates: {sorted(listed - catalog)}")
