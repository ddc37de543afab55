// node-postgres named queries through pgvalve in transaction mode.
// Several clients run the same statement names with different texts (q1), the same text
// under the same name (q2), and named inserts inside explicit transactions; every result is
// checked. Connection settings come from PGHOST / PGPORT / PGUSER / PGPASSWORD / PGDATABASE.
// Usage: node node_named.js CLIENTS ITERATIONS      exit 0 when every check passed
'use strict';

const { Client } = require('pg');

const clients = parseInt(process.argv[2] || '4', 10);
const iterations = parseInt(process.argv[3] || '200', 10);

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function runClient(k) {
  const c = new Client({ connectionTimeoutMillis: 10000, statement_timeout: 30000 });
  await c.connect();
  const pids = new Set();
  try {
    for (let i = 0; i < iterations; i++) {
      // same name in every client, a different text per client
      const r1 = await c.query({ name: 'q1', text: `select $1::int + ${k} as v`, values: [i] });
      check(r1.rows.length === 1 && r1.rows[0].v === i + k, `client ${k} q1(${i}) = ${JSON.stringify(r1.rows)}`);
      // same name and text in every client
      const r2 = await c.query({ name: 'q2', text: 'select $1::text || $2::text as s', values: [`c${k}-`, String(i)] });
      check(r2.rows[0].s === `c${k}-${i}`, `client ${k} q2 = ${JSON.stringify(r2.rows)}`);
      if (i % 10 === 0) {
        // an explicit transaction with named statements
        await c.query('BEGIN');
        const p = await c.query({ name: 'pid', text: 'select pg_backend_pid() as pid' });
        pids.add(p.rows[0].pid);
        for (let j = 0; j < 3; j++) {
          await c.query({ name: 'ins', text: 'insert into node_results(client, i) values ($1, $2)', values: [k, i * 10 + j] });
        }
        const n = await c.query({ name: 'cnt', text: 'select count(*)::int as n from node_results where client = $1', values: [k] });
        check(n.rows[0].n === (i / 10 + 1) * 3, `client ${k} count in tx = ${n.rows[0].n}`);
        const again = await c.query({ name: 'pid', text: 'select pg_backend_pid() as pid' });
        check(again.rows[0].pid === p.rows[0].pid, `client ${k} changed server inside a transaction`);
        await c.query('COMMIT');
      }
    }
    // an error in a named query does not break the connection or its statements
    let failed = false;
    try {
      await c.query({ name: 'div', text: 'select 1 / $1::int as v', values: [0] });
    } catch (e) {
      failed = e.code === '22012';
    }
    check(failed, `client ${k} division by zero not reported as 22012`);
    const r = await c.query({ name: 'div', text: 'select 1 / $1::int as v', values: [1] });
    check(r.rows[0].v === 1, `client ${k} div after error`);
    const r1 = await c.query({ name: 'q1', text: `select $1::int + ${k} as v`, values: [1000] });
    check(r1.rows[0].v === 1000 + k, `client ${k} q1 after error`);
    return pids;
  } finally {
    await c.end();
  }
}

(async () => {
  const results = await Promise.all(Array.from({ length: clients }, (_, k) => runClient(k)));
  const all = new Set();
  results.forEach((s) => s.forEach((p) => all.add(p)));
  console.log(`OK clients=${clients} iterations=${iterations} server_pids=${[...all].sort().join(',')}`);
})().catch((e) => {
  console.error(`FAILED: ${e.stack || e}`);
  process.exit(1);
});
