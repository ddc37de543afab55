"""Real PostgreSQL 15 clusters and a real pgvalve process for the integration tests.

No mocks: `PgCluster` runs initdb / pg_ctl / pg_basebackup (as the `postgres` system user
when we are root) on loopback ports inside a temporary directory; `Pgvalve` starts the real
binary with a YAML config it writes. Everything started here is stopped by PID at teardown,
and again from an atexit hook if a fixture finalizer never ran.

    cluster = PgCluster(replicas=1).start()
    cluster.primary.sql("select 1", dbname="telemetry")   # superuser, unix socket
    cluster.primary.psql("select 1")                      # psql -At, returns stdout
    cluster.replicas[0].port
    cluster.primary.kill9(); cluster.primary.stop(mode="immediate")
    cluster.teardown()

    pv = Pgvalve(cluster, workdir, pool_size=1, limits={"auth_timeout_ms": 500}).start()
    psycopg.connect(pv.dsn())
    pv.reload(new_config_dict_or_text); pv.stop()
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
HERE = Path(__file__).resolve().parent
DEFAULT_PGVALVE_BIN = (HERE / ".." / ".." / "build" / "pgvalve").resolve()

APP_USER = "app"
APP_PASSWORD = "app-secret"
APP_DB = "telemetry"
REPL_USER = "replicator"
REPL_PASSWORD = "repl-secret"

IS_ROOT = os.geteuid() == 0

# Everything started by this module, for the atexit safety net: objects with .teardown()/.stop().
_LIVE: list = []


def _atexit_cleanup():
    for obj in reversed(list(_LIVE)):
        try:
            if isinstance(obj, Pgvalve):
                obj.stop(timeout=3)
            else:
                obj.teardown()
        except Exception:
            pass


atexit.register(_atexit_cleanup)


_RECENT_PORTS: collections.deque[int] = collections.deque(maxlen=256)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0).

    The kernel may hand out the same ephemeral port twice in a row when
    nothing has bound it yet (listen and admin_listen once got the same
    port), so ports handed out recently by this process are skipped.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _RECENT_PORTS:
            _RECENT_PORTS.append(port)
            return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _pg_user_cmd(args: list[str]) -> list[str]:
    """Run a PostgreSQL server tool as `postgres` when we are root (it refuses root)."""
    if IS_ROOT:
        return ["runuser", "-u", "postgres", "--"] + args
    return args


def _chown_pg(path: Path):
    if not IS_ROOT:
        return
    pw = pwd.getpwnam("postgres")
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _run(args, timeout=120, env=None, cwd=None, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and r.returncode != 0:
        raise RuntimeError(
            f"command failed ({r.returncode}): {' '.join(map(str, args))}\n"
            f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")
    return r


# What a new primary's data directory holds before its test's settings: initdb's output with the
# test roles and database. initdb takes about a second of CPU, and the suite makes a hundred
# primaries, so the first cluster made on a machine builds it once and every other copies it.
# Bump the recipe when what it holds changes (the key also names the roles' passwords).
_TEMPLATE_RECIPE = 1


def _template_dir() -> Path:
    key = hashlib.sha256(repr((_TEMPLATE_RECIPE, str(PG_BIN), APP_USER, APP_PASSWORD, APP_DB,
                               REPL_USER, REPL_PASSWORD)).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"pgvalve-it-template-{os.geteuid()}-{key}"


def _build_template(template: Path):
    if template.exists():
        shutil.rmtree(template)  # a build that did not finish
    template.mkdir()
    os.chmod(template, 0o755)
    _chown_pg(template)
    data = template / "data"
    _run(_pg_user_cmd([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--no-sync",
                       "-E", "UTF8", "--locale=C", "--auth-local=trust",
                       "--auth-host=scram-sha-256"]), cwd=str(template))
    # Started on its unix socket only, with its settings on the command line: the copies'
    # postgresql.conf stays initdb's.
    port = free_port()
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    _run(_pg_user_cmd(ctl + ["-l", str(template / "log"), "-o",
                             f"-c listen_addresses= -p {port} -k {template}", "start"]),
         timeout=90, cwd=str(template))
    try:
        for sql in (f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'",
                    f"CREATE ROLE {REPL_USER} LOGIN REPLICATION PASSWORD '{REPL_PASSWORD}'",
                    f"CREATE DATABASE {APP_DB} OWNER {APP_USER}"):
            _run(_pg_user_cmd([str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                               "-h", str(template), "-p", str(port), "-U", "postgres",
                               "-d", "postgres", "-c", sql]), cwd=str(template))
    finally:
        _run(_pg_user_cmd(ctl + ["-m", "fast", "stop"]), timeout=60, cwd=str(template))
    (template / "ready").touch()


def _new_primary_datadir(datadir: Path):
    """`datadir` made as initdb makes it, with the test roles and database (see above)."""
    template = _template_dir()
    with open(f"{template}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # test processes run side by side
        if not (template / "ready").exists():
            _build_template(template)
    _run(["cp", "-a", str(template / "data"), str(datadir)])


class PgNode:
    """One postmaster (primary or replica) in its own data directory and port."""

    def __init__(self, name: str, base: Path, port: int):
        self.name = name
        self.base = base
        self.datadir = base / name
        self.port = port
        self.sockdir = base / "sock"
        self.logfile = base / f"{name}.log"
        self.running = False

    # -- lifecycle ---------------------------------------------------------------------
    def pg_ctl(self, *args, timeout=60, check=True):
        cmd = _pg_user_cmd([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), *args])
        return _run(cmd, timeout=timeout, cwd=str(self.base), check=check)

    def start(self):
        self.pg_ctl("-w", "-t", "60", "-l", str(self.logfile), "start", timeout=90)
        self.running = True
        return self

    def stop(self, mode: str = "fast"):
        """pg_ctl stop -m fast|immediate|smart. Falls back to SIGKILL of the postmaster."""
        if not self.datadir.exists():
            self.running = False
            return
        pid = self.postmaster_pid()
        if pid is not None and _pid_alive(pid):
            r = self.pg_ctl("-w", "-t", "30", "-m", mode, "stop", timeout=45, check=False)
            if r.returncode != 0 and self.postmaster_pid() == pid and _pid_alive(pid):
                self.kill9()
        self.running = False

    def kill9(self):
        """SIGKILL the postmaster by PID (crash simulation for failover tests). Waits for its
        children too: they notice the postmaster's death and exit on their own, and until they
        have, the old shared memory is in use and a start of this node fails."""
        pid = self.postmaster_pid()
        if pid is not None and _pid_alive(pid):
            children = _children_of(pid)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while (_pid_alive(pid) or any(_pid_alive(c) for c in children)) and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            # Init here may leave the dead postmaster a zombie, whose PID PostgreSQL's lock
            # check takes for a running postmaster: the lock file goes as after a real crash.
            if not _pid_alive(pid) and self.postmaster_pid() == pid:
                (self.datadir / "postmaster.pid").unlink(missing_ok=True)
                (self.sockdir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
        self.running = False
        return pid

    def promote(self):
        self.pg_ctl("-w", "-t", "60", "promote", timeout=90)

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (OSError, IndexError, ValueError):
            return None

    # -- SQL helpers -------------------------------------------------------------------
    def conninfo(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.sockdir} port={self.port} dbname={dbname} user={user} connect_timeout=10"

    def connect(self, dbname: str = "postgres", user: str = "postgres", **kw) -> psycopg.Connection:
        """Superuser connection over the unix socket (trust)."""
        kw.setdefault("autocommit", True)
        return psycopg.connect(self.conninfo(dbname, user), **kw)

    def sql(self, query: str, params=None, dbname: str = "postgres"):
        """Run SQL as superuser via the unix socket; returns all rows (or [] for no result)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    def scalar(self, query: str, params=None, dbname: str = "postgres"):
        rows = self.sql(query, params, dbname)
        return rows[0][0] if rows else None

    def psql(self, script: str, dbname: str = "postgres", timeout: float = 60) -> str:
        """psql -X -At -v ON_ERROR_STOP=1 as superuser over the unix socket; returns stdout."""
        r = _run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.sockdir),
                  "-p", str(self.port), "-U", "postgres", "-d", dbname, "-c", script],
                 timeout=timeout)
        return r.stdout

    def tcp_dsn(self, user=APP_USER, password=APP_PASSWORD, dbname=APP_DB) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}?connect_timeout=10"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _children_of(pid: int) -> list[int]:
    """The PIDs of `pid`'s child processes now."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # ppid is the second field after the command name, which is in parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class PgCluster:
    """A primary and N streaming replicas (pg_basebackup -R -X stream) on free loopback ports."""

    def __init__(self, replicas: int = 1, base: str | None = None, extra_conf: str = ""):
        self.n_replicas = replicas
        self.base = Path(base or tempfile.mkdtemp(prefix="pgvalve-it-"))
        self.extra_conf = extra_conf
        self.primary: PgNode | None = None
        self.replicas: list[PgNode] = []
        self._torn_down = False

    @property
    def nodes(self) -> list[PgNode]:
        return ([self.primary] if self.primary else []) + self.replicas

    def start(self) -> "PgCluster":
        _LIVE.append(self)
        try:
            self._start()
        except BaseException:
            self.teardown()
            raise
        return self

    def _start(self):
        os.chmod(self.base, 0o755)
        _chown_pg(self.base)
        sockdir = self.base / "sock"
        sockdir.mkdir(exist_ok=True)
        _chown_pg(sockdir)

        p = PgNode("primary", self.base, free_port())
        _new_primary_datadir(p.datadir)
        self.primary = p
        with open(p.datadir / "postgresql.conf", "a") as f:
            f.write(f"""
# --- pgvalve integration tests ---
listen_addresses = '127.0.0.1'
port = {p.port}
unix_socket_directories = '{sockdir}'
fsync = off
full_page_writes = off
max_connections = 200
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
wal_keep_size = '256MB'
password_encryption = 'scram-sha-256'
log_min_messages = warning
log_connections = off
shared_buffers = '32MB'
cluster_name = 'primary'
{self.extra_conf}
""")
        (p.datadir / "pg_hba.conf").write_text(f"""\
# TYPE  DATABASE     USER          ADDRESS        METHOD
local   all          all                          trust
local   replication  all                          trust
host    replication  {REPL_USER}    127.0.0.1/32   scram-sha-256
host    all          all           127.0.0.1/32   scram-sha-256
""")
        _chown_pg(p.datadir / "pg_hba.conf")
        p.start()

        for i in range(self.n_replicas):
            self.add_replica(f"replica{i + 1}")
        return self

    def add_replica(self, name: str) -> PgNode:
        r = PgNode(name, self.base, free_port())
        env = dict(os.environ, PGPASSWORD=REPL_PASSWORD)
        cmd = [str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
               "-U", REPL_USER, "-D", str(r.datadir), "-R", "-X", "stream", "-c", "fast",
               "--no-sync"]
        if IS_ROOT:
            cmd = ["runuser", "-u", "postgres", "--", "env", f"PGPASSWORD={REPL_PASSWORD}"] + cmd
        _run(cmd, timeout=120, env=env, cwd=str(self.base))
        with open(r.datadir / "postgresql.conf", "a") as f:
            f.write(f"\nport = {r.port}\ncluster_name = '{name}'\nhot_standby = on\n")
        self.replicas.append(r)
        r.start()
        self.wait_streaming(name)
        return r

    def wait_streaming(self, name: str, timeout: float = 30):
        """Wait until `name` shows in the primary's pg_stat_replication as streaming."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.primary.sql(
                "select application_name, state from pg_stat_replication")
            if (name, "streaming") in [tuple(x) for x in last]:
                return
            time.sleep(0.1)
        replica = next((n for n in self.replicas if n.name == name), None)
        raise RuntimeError(f"replica {name} not streaming after {timeout}s: "
                           f"pg_stat_replication={last}\n"
                           f"{replica.log_tail() if replica else ''}")

    def wait_replay(self, timeout: float = 15):
        """Wait until every running replica has replayed the primary's current WAL position."""
        lsn = self.primary.scalar("select pg_current_wal_insert_lsn()::text")
        deadline = time.monotonic() + timeout
        for r in self.replicas:
            if not r.running:
                continue
            while True:
                ok = r.scalar("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
                if ok:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{r.name} did not replay {lsn} in {timeout}s")
                time.sleep(0.05)

    def create_user(self, name: str, password: str, dbname: str = APP_DB):
        self.primary.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        self.primary.psql(f"GRANT ALL ON DATABASE {dbname} TO {name}")
        self.primary.psql(f"GRANT ALL ON SCHEMA public TO {name}", dbname=dbname)

    def teardown(self):
        if self._torn_down:
            return
        self._torn_down = True
        for node in reversed(self.nodes):
            try:
                node.stop(mode="immediate")
            except Exception:
                try:
                    node.kill9()
                except Exception:
                    pass
        if os.environ.get("PGVALVE_KEEP_TMP") != "1":
            shutil.rmtree(self.base, ignore_errors=True)
        if self in _LIVE:
            _LIVE.remove(self)


# ---------------------------------------------------------------------------------------
# pgvalve process helper
# ---------------------------------------------------------------------------------------

def to_yaml(obj, indent: int = 0) -> str:
    """Tiny YAML emitter for the config (dicts, lists, scalars). Strings are JSON-quoted,
    which is valid YAML and keeps '$', ':' and '#' literal."""
    pad = "  " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                out.append(to_yaml(v, indent + 1))
            else:
                out.append(f"{pad}{k}: {_yaml_scalar(v)}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict) and v:
                inner = to_yaml(v, indent + 1).splitlines()
                out.append(f"{pad}- {inner[0].lstrip()}")
                out.extend(inner[1:])
            elif isinstance(v, list) and v:
                out.append(f"{pad}-")
                out.append(to_yaml(v, indent + 1))
            else:
                out.append(f"{pad}- {_yaml_scalar(v)}")
    else:
        out.append(pad + _yaml_scalar(obj))
    return "\n".join(out)


def _yaml_scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    s = str(v)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-/]*", s) and s.lower() not in (
            "true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"):
        return s
    if re.fullmatch(r"[0-9.]+:[0-9]+", s):  # host:port
        return s
    return json.dumps(s)


TOP_LEVEL_KEYS = {"listen", "admin_listen", "workers", "log_level", "shutdown_timeout_s", "tls",
                  "server_tls_ca", "server_allow_insecure_auth",
                  "server_tls", "users", "pool", "limits", "databases", "routing", "health",
                  "failover", "stats"}


def _set_pdeathsig():
    """Child dies with SIGKILL if the test runner dies (ctest timeout, kill -9 of pytest)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Pgvalve:
    """The real pgvalve binary with a config written to a temp file.

    Keyword arguments that are top-level config keys (limits=, routing=, users=,
    shutdown_timeout_s=, ...) replace those sections; any other keyword goes into `pool:`.
    """

    def __init__(self, cluster: PgCluster, workdir: Path | str, binary: str | None = None,
                 wrapper: list[str] | None = None, **overrides):
        self.cluster = cluster
        # A command the binary runs under, e.g. ["prlimit", "--nofile=64:64", "--"] (it must
        # exec the binary, so that the pid is pgvalve's).
        self.wrapper = list(wrapper or [])
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or os.environ.get("PGVALVE_BIN") or str(DEFAULT_PGVALVE_BIN)
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = self.workdir / "pgvalve.yaml"
        self.log_path = self.workdir / "pgvalve.log"
        self.proc: subprocess.Popen | None = None
        self._logf = None
        self.config = self.default_config()
        pool = dict(self.config["pool"])
        for k, v in overrides.items():
            if k in TOP_LEVEL_KEYS:
                self.config[k] = v
            else:
                pool[k] = v
        self.config["pool"] = pool

    def default_config(self) -> dict:
        # The primary only: tests of replicas list them (test_replicas.py).
        shard = {"name": "s0", "primary": f"127.0.0.1:{self.cluster.primary.port}"}
        return {
            "listen": f"127.0.0.1:{self.port}",
            "admin_listen": f"127.0.0.1:{self.admin_port}",
            "workers": 2,
            "log_level": "debug",
            "users": [{"name": APP_USER, "password": APP_PASSWORD}],
            "pool": {"mode": "transaction", "pool_size": 4, "checkout_timeout_ms": 5000},
            "databases": {APP_DB: {"shards": [shard]}},
        }

    def render(self, config=None) -> str:
        return to_yaml(self.config if config is None else config) + "\n"

    def write_config(self, config=None):
        """config: dict (rendered to YAML) or raw text (written as is)."""
        text = config if isinstance(config, str) else self.render(config)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def start(self, timeout: float = 15) -> "Pgvalve":
        if not Path(self.binary).exists():
            raise RuntimeError(f"pgvalve binary not found at {self.binary} (set PGVALVE_BIN)")
        self.write_config()
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.wrapper, self.binary, "--config",
                                      str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=subprocess.STDOUT, cwd=str(self.workdir),
                                     preexec_fn=_set_pdeathsig)
        _LIVE.append(self)
        if not wait_for_port(self.port, timeout, self.proc):
            rc = self.proc.poll()
            self.stop(timeout=3)
            raise RuntimeError(
                f"pgvalve did not accept TCP on 127.0.0.1:{self.port} within {timeout}s "
                f"(exit code {rc})\nconfig:\n{self.config_path.read_text()}\n"
                f"log tail:\n{self.log_tail()}")
        # The port probe was a client socket too (it counts against the connection limits):
        # wait until pgvalve has seen it go, so that tests start with an empty door.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and self.open_client_sockets() not in (0, None):
            time.sleep(0.02)
        return self

    def open_client_sockets(self) -> int | None:
        """pgvalve_client_connections_open from /metrics; None when it cannot be read."""
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics",
                                        timeout=2) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("pgvalve_client_connections_open "):
                        return int(float(line.split()[1]))
        except OSError:
            return None
        return None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def reload(self, new_config=None):
        """Rewrite the config file (dict, raw YAML text, or the current self.config) + SIGHUP."""
        if isinstance(new_config, dict):
            self.config = new_config
        self.write_config(new_config if new_config is not None else self.config)
        self.signal(signal.SIGHUP)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds. Returns the exit code."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            rc = self.proc.returncode
        if self._logf is not None:
            self._logf.close()
            self._logf = None
        if self in _LIVE:
            _LIVE.remove(self)
        return rc

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def dsn(self, user: str = APP_USER, password: str = APP_PASSWORD, dbname: str = APP_DB,
            **params) -> str:
        """libpq URI for clients; extra params become query parameters."""
        params.setdefault("connect_timeout", 10)
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}?{q}"

    def connect(self, autocommit: bool = True, **kw) -> psycopg.Connection:
        dsn_kw = {k: kw.pop(k) for k in list(kw) if k in ("user", "password", "dbname")}
        return psycopg.connect(self.dsn(**dsn_kw), autocommit=autocommit, **kw)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value; returns it or raises AssertionError."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = predicate()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - polling
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))
