// postgres.js (npm "postgres") sql.begin() with rows for two shards: postgres.js sends COMMIT as
// Parse, Describe of the statement, Bind, Execute, Sync, which must end every shard's part.
// Devices D0 and D1 (argv) live on different shards. Each statement is first run once outside
// the transaction for each device (what a failure there says is printed, not fatal).
// Connection settings come from PGHOST / PGPORT / PGUSER / PGPASSWORD / PGDATABASE.
// Usage: node postgresjs_sharded_tx.js D0 D1
// Prints one JSON line {"committed": true|false, "error": ..., "after": 1} and exits 0.
'use strict';

const postgres = require('postgres');

const [d0, d1] = process.argv.slice(2).map((v) => parseInt(v, 10));

(async () => {
  const sql = postgres({ max: 1, idle_timeout: 0, connect_timeout: 10, onnotice: () => {} });
  const guard = setTimeout(() => {
    console.log(JSON.stringify({ committed: false, error: 'no answer within 30 s' }));
    process.exit(0);
  }, 30000);
  const result = { committed: false, error: null, after: null };
  try {
    for (const d of [d0, d1]) {
      try {
        await sql`INSERT INTO telemetry (device_id, value) VALUES (${d}, ${0})`;
      } catch (e) {
        result[`warm_${d}`] = e.message;
      }
    }
    try {
      await sql.begin(async (tx) => {
        await tx`INSERT INTO telemetry (device_id, value) VALUES (${d0}, ${1})`;
        await tx`INSERT INTO telemetry (device_id, value) VALUES (${d1}, ${1})`;
      });
      result.committed = true;
    } catch (e) {
      result.error = `${e.code} ${e.message}`;
    }
    const [{ one }] = await sql`SELECT 1 AS one`;
    result.after = one;
  } finally {
    clearTimeout(guard);
    await sql.end({ timeout: 5 });
  }
  console.log(JSON.stringify(result));
})();
