"""The status page at `/` on admin_listen, loaded by a real browser (headless Chromium from
Debian) from a live pgvalve: what it rendered from /status is checked, not the HTML source."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser

import pytest

from pgcluster import wait_until


def chromium() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not installed (scripts/install-deps installs it)")
    return path


class Tables(HTMLParser):
    """Cell texts of every table of a DOM dump, by table id."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.table = None
        self.row = None
        self.cell = None
        self.text: dict[str, str] = {}
        self.element_id = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table = self.tables.setdefault(a.get("id", ""), [])
        elif tag == "tr" and self.table is not None:
            self.row = []
            self.table.append(self.row)
        elif tag in ("td", "th") and self.row is not None:
            self.cell = ""
        if "id" in a and tag == "div":
            self.element_id = a["id"]
            self.text[self.element_id] = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row.append(self.cell)
            self.cell = None
        elif tag == "table":
            self.table = None
        elif tag == "div":
            self.element_id = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        if self.element_id:
            self.text[self.element_id] += data


def render(url: str, tmp_path) -> Tables:
    """The page's DOM after its scripts ran, as Chromium rendered it."""
    r = subprocess.run(
        [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr[-3000:]
    parsed = Tables()
    parsed.feed(r.stdout)
    return parsed


def test_the_status_page_shows_hosts_and_statements(pgvalve, cluster, tmp_path):
    pv = pgvalve(stats={"slow_query_ms": 50})
    with pv.connect() as c:
        for i in range(3):
            c.execute("select %s::int + 40 as answer", (i,))
        c.execute('select pg_sleep(0.1) as "<b>nap</b>"')
    base = f"http://127.0.0.1:{pv.admin_port}"
    with urllib.request.urlopen(base + "/", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        html = r.read().decode()
    assert "http://" not in html and "https://" not in html  # no external assets
    wait_until(lambda: b'"state":"up"' in urllib.request.urlopen(base + "/status").read(), 10,
               message="the primary checked")
    page = render(base + "/", tmp_path)
    assert "client connections" in page.text["meta"], page.text
    hosts = page.tables["hosts"][1:]
    assert [h[2:5] for h in hosts] == [[f"127.0.0.1:{cluster.primary.port}", "primary", "up"]]
    queries = {row[0]: row for row in page.tables["queries"][1:]}
    assert queries["select $1::int + $2 as answer"][1] == "3"  # calls
    slow = page.tables["slow"][1:]
    # Texts from clients are text on the page: markup in them shows as written (had it been
    # taken as HTML, the cell's text would be "nap" alone).
    assert len(slow) == 1 and slow[0][5] == 'select pg_sleep($1) as "<b>nap</b>"', slow
