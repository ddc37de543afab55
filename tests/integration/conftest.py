"""Fixtures for pgvalve integration tests against real PostgreSQL 15 and the real binary.

    cluster   session-scoped (one per test module / ctest test): primary + 1 streaming replica
    pgvalve   function-scoped factory: pgvalve(pool_size=1, mode="session",
              limits={...}, routing={...}, users=[...], shutdown_timeout_s=5) -> started Pgvalve
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgcluster import DEFAULT_PGVALVE_BIN, PgCluster, Pgvalve  # noqa: E402


def pgvalve_binary() -> str:
    return os.environ.get("PGVALVE_BIN") or str(DEFAULT_PGVALVE_BIN)


@pytest.fixture(scope="session")
def cluster(request):
    c = PgCluster(replicas=1)
    request.addfinalizer(c.teardown)
    c.start()
    return c


@pytest.fixture
def pgvalve(request, cluster, tmp_path):
    """Factory: each call starts one pgvalve with its own config; all are stopped at teardown."""
    started: list[Pgvalve] = []
    request.node._pgvalve_instances = started

    def make(**overrides) -> Pgvalve:
        binary = pgvalve_binary()
        if not Path(binary).exists():
            pytest.fail(f"pgvalve binary not found at {binary} (build it or set PGVALVE_BIN)")
        pv = Pgvalve(cluster, tmp_path / f"pgvalve{len(started)}", binary=binary, **overrides)
        started.append(pv)
        pv.start()
        return pv

    def fin():
        for pv in reversed(started):
            try:
                pv.stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping pgvalve pid {pv.pid}: {e}", file=sys.stderr)

    request.addfinalizer(fin)
    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, pv in enumerate(getattr(item, "_pgvalve_instances", [])):
            rc = pv.proc.poll() if pv.proc is not None else None
            state = "running" if rc is None else f"EXITED with code {rc}"
            report.sections.append(
                (f"pgvalve[{i}] pid {pv.pid} {state}; log tail ({pv.log_path})",
                 pv.log_tail(80)))


TEST_TIME_LIMIT_S = int(os.environ.get("PGVALVE_TEST_TIME_LIMIT_S", "150"))


def _alarm(signum, frame):
    raise TimeoutError(f"test exceeded {TEST_TIME_LIMIT_S}s (conftest watchdog)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Every test is bounded in time: SIGALRM raises in the main thread (interrupts socket waits)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TEST_TIME_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
