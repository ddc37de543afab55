"""deploy/ is checked with what this machine has (issue 7): the Kubernetes manifests against the
API's schemas and the compose file against the Compose Specification (tests/deploy/validate.mjs,
npm packages installed here), the Dockerfile's syntax and its Debian package names (apt-cache),
the systemd unit with `systemd-analyze verify`, and every pgvalve config in deploy/ with
`pgvalve --check`. Nothing here builds an image or starts a container: no daemon runs in CI."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from pgcluster import DEFAULT_PGVALVE_BIN

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHECKS = ROOT / "tests" / "deploy"


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def pgvalve_bin():
    return os.environ.get("PGVALVE_BIN") or str(DEFAULT_PGVALVE_BIN)


def test_schemas_of_compose_kubernetes_and_dockerfile():
    if not (CHECKS / "node_modules" / "kubernetes-models").exists():
        r = run(["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"], cwd=CHECKS)
        assert r.returncode == 0, f"npm install in {CHECKS}:\n{r.stdout}\n{r.stderr}"
    r = run(["node", str(CHECKS / "validate.mjs"), str(ROOT)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok ") == 3, r.stdout


def test_dockerfile_installs_packages_that_exist_and_copies_what_the_build_needs():
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    packages = set()
    for m in re.finditer(r"apt-get install ([^&]*)", joined):
        packages |= {w for w in m.group(1).split() if not w.startswith("-")}
    assert {"libssl3", "libyaml-cpp0.7", "ca-certificates"} <= packages, packages
    for p in sorted(packages):
        r = run(["apt-cache", "show", p])
        assert r.returncode == 0 and r.stdout.strip(), f"no Debian package {p}"
    # The runtime stage carries every library the binary links directly (apt brings theirs):
    # the NEEDED entries of the one built here.
    r = run(["objdump", "-p", pgvalve_bin()])
    for lib in re.findall(r"^\s*NEEDED\s+(\S+)", r.stdout, re.M):
        if re.match(r"lib(a|ub|l|t)san", lib):
            continue  # PGVALVE_SANITIZE builds only; the image is a Release build
        owner = run(["dpkg", "-S", f"*/{lib}"]).stdout.split(":")[0]
        assert owner in packages | {"libc6", "libstdc++6", "libgcc-s1", "libc6-i386"}, \
            f"{lib} ({owner}) is not installed in the runtime stage"
    copied = re.findall(r"^COPY (?!--from)(\S+) ", text, re.M)
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
    # Every folder CMakeLists.txt builds a library from (a missing one configures as an empty
    # library and fails to link).
    folders = re.findall(r"^pgvalve_library\(\S+ (\S+)\)", (ROOT / "CMakeLists.txt").read_text(),
                         re.M)
    assert len(folders) >= 9 and set(folders) <= set(copied), set(folders) - set(copied)


def test_systemd_unit_verifies(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (apt-get install systemd)"
    unit = (DEPLOY / "systemd" / "pgvalve.service").read_text()
    # Verified against the binary built here (the unit names its installed path).
    unit = unit.replace("/usr/local/bin/pgvalve", pgvalve_bin())
    (tmp_path / "pgvalve.service").write_text(unit)
    r = run(["systemd-analyze", "verify", str(tmp_path / "pgvalve.service")],
            env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    problems = [l for l in (r.stdout + r.stderr).splitlines()
                if "pgvalve.service" in l and "Documentation" not in l]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "NoNewPrivileges=true" in unit and "ProtectSystem=strict" in unit


def test_every_pgvalve_config_in_deploy_loads(tmp_path):
    env = dict(os.environ, APP_PASSWORD="a", OPS_PASSWORD="o", APP_DB_PASSWORD="d")
    configs = {"compose": (DEPLOY / "compose" / "pgvalve.yaml").read_text()}
    for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "pgvalve.yaml").read_text()):
        if doc["kind"] == "ConfigMap":
            configs["kubernetes"] = doc["data"]["pgvalve.yaml"]
    assert set(configs) == {"compose", "kubernetes"}
    for name, text in configs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        r = run([pgvalve_bin(), "--config", str(path), "--check"], env=env)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        assert "admin_listen = 0.0.0.0:9930" in r.stdout, name  # probes reach it
