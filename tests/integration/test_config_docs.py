"""The configuration examples users copy — the README's minimal file, docs/configuration.md's
complete example and the sandbox's file — load with `pgvalve --check`: none of them holds a
key pgvalve refuses as not supported yet."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from pgcluster import DEFAULT_PGVALVE_BIN

ROOT = Path(__file__).resolve().parents[2]


def yaml_block_after(doc: Path, heading: str) -> str:
    text = doc.read_text()
    start = text.index(heading)
    m = re.search(r"```yaml\n(.*?)```", text[start:], re.S)
    assert m, f"no yaml block after {heading!r} in {doc}"
    return m.group(1)


EXAMPLES = {
    "readme_minimal": lambda: yaml_block_after(ROOT / "README.md", "## A minimal configuration"),
    "configuration_complete": lambda: yaml_block_after(ROOT / "docs/configuration.md",
                                                       "## A complete example"),
    "sandbox": lambda: (ROOT / "deploy/sandbox.yaml").read_text(),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_loads(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    path.write_text(EXAMPLES[name]())
    env = dict(os.environ, APP_PASSWORD="a", OPS_PASSWORD="o", APP_DB_PASSWORD="d")
    binary = os.environ.get("PGVALVE_BIN") or str(DEFAULT_PGVALVE_BIN)
    r = subprocess.run([binary, "--config", str(path), "--check"], capture_output=True,
                       text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not supported yet" not in r.stdout + r.stderr


def test_the_command_line_says_what_is_wrong():
    binary = os.environ.get("PGVALVE_BIN") or str(DEFAULT_PGVALVE_BIN)

    def run(*args):
        return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)

    r = run("--help")
    assert r.returncode == 0 and "usage: pgvalve --config FILE" in r.stdout, r
    r = run("--bogus")
    assert r.returncode == 2 and "pgvalve: unknown option --bogus" in r.stderr, r
    r = run()
    assert r.returncode == 2 and "--config FILE is required" in r.stderr, r
    r = run("--config")
    assert r.returncode == 2 and "--config needs the path" in r.stderr, r
