"""Drill 8: SWITCHOVER with pool.mode session. The docs: session clients hold their primary
connection for their whole session, so the switchover can succeed only once they disconnect;
otherwise 55000 and writes resume on the old primary. Also: what a connected session client sees
after a switchover that succeeded once it had disconnected and reconnected."""
import time
from common import *
c = new_cluster()
pv = None
try:
    pv = start_pgvalve(c, "session", pool_size=4, mode="session",
                       failover={"mode": "follow", "hold_writes_ms": 2000})
    wait_hosts_up(pv)
    s = pv.connect()
    s.execute("insert into drill (client, n) values (5, 0)")
    t0 = time.monotonic()
    with admin(pv) as a:
        try:
            a.execute(f"SWITCHOVER {APP_DB} s0")
            print("switchover with a session client connected: OK")
        except psycopg.Error as e:
            print(f"switchover with a session client connected: {e.sqlstate} after {time.monotonic()-t0:.2f}s: {str(e).strip()[:250]}")
    print("session client writes again on port",
          s.execute("insert into drill (client, n) values (5, 1) returning inet_server_port()").fetchone()[0],
          "primary", c.primary.port)
    s.close()
    time.sleep(0.3)
    with admin(pv) as a:
        try:
            a.execute(f"SWITCHOVER {APP_DB} s0"); print("switchover with no session client: OK")
        except psycopg.Error as e:
            print("switchover with no session client:", e.sqlstate, str(e).strip()[:250])
    with pv.connect() as s2:
        print("new session client writes on port",
              s2.execute("insert into drill (client, n) values (5, 2) returning inet_server_port()").fetchone()[0])
    print(fmt_hosts(pv))
finally:
    if pv: pv.stop()
    c.teardown()
