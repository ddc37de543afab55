// postgres.js (npm "postgres") against a sharded database, on fresh connections: it prepares
// each statement with Parse, Describe and Flush, and binds it once it knows the parameter types.
// The first use of a statement for a device on another shard than the first, a keyed read, and
// reads over every shard with a parameter must work like any later use.
// Devices D0 and D1 (argv) live on different shards. With "unnamed", postgres.js runs with
// prepare: false: the same messages with the unnamed statement.
// Connection settings come from PGHOST / PGPORT / PGUSER / PGPASSWORD / PGDATABASE.
// Usage: node postgresjs_sharded.js D0 D1 [unnamed]
// Prints one JSON line of what each step returned (or its error) and exits 0.
'use strict';

const postgres = require('postgres');

const [d0, d1] = process.argv.slice(2, 4).map((v) => parseInt(v, 10));
const prepare = process.argv[4] !== 'unnamed';

(async () => {
  const sql = postgres({
    max: 1, idle_timeout: 0, connect_timeout: 10, prepare, onnotice: () => {},
  });
  const guard = setTimeout(() => {
    console.log(JSON.stringify({ error: 'no answer within 30 s' }));
    process.exit(0);
  }, 30000);
  const result = {};
  const step = async (name, run) => {
    try {
      result[name] = await run();
    } catch (e) {
      result[name] = `error ${e.code} ${e.message}`;
    }
  };
  try {
    await step('insert_d1', async () =>
      (await sql`INSERT INTO telemetry (device_id, value) VALUES (${d1}, ${1})`).count);
    await step('insert_d0', async () =>
      (await sql`INSERT INTO telemetry (device_id, value) VALUES (${d0}, ${2})`).count);
    await step('read_d1', async () =>
      Number((await sql`SELECT value FROM telemetry WHERE device_id = ${d1}`)[0].value));
    await step('count_over', async () =>
      Number((await sql`SELECT count(*) AS n FROM telemetry WHERE value > ${0}`)[0].n));
    await step('ordered', async () =>
      (await sql`SELECT device_id, value FROM telemetry WHERE value > ${0} ORDER BY value LIMIT ${5}`)
        .map((r) => Number(r.device_id)));
  } finally {
    clearTimeout(guard);
    await sql.end({ timeout: 5 });
  }
  console.log(JSON.stringify(result));
})();
