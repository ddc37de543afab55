// postgres.js (npm "postgres") COPY FROM STDIN against a sharded database through pgvalve:
// sql`COPY ...`.writable() sends the COPY with the simple protocol and hands back a Writable,
// fed here through stream.pipeline (which waits for backpressure) with rows for many devices.
// Rows: i = 1..ROWS, device_id = 1 + (i * 7919) % DEVICES, ts = i, value = i + 0.5, written in
// chunks of 64 rows, so each CopyData message holds many rows of many shards.
// postgres.js does not hand the COPY's row count to the caller (the writable's promise settles
// at CopyInResponse), so the script reads count(*) back through pgvalve once the stream finished.
// Connection settings come from PGHOST / PGPORT / PGUSER / PGPASSWORD / PGDATABASE.
// Usage: node postgresjs_copy.js ROWS DEVICES
// Prints one JSON line {"ok": true, "written": N, "count": N} and exits 0; exits 1 on an error.
'use strict';

const postgres = require('postgres');
const { Readable } = require('node:stream');
const { pipeline } = require('node:stream/promises');

const rows = parseInt(process.argv[2], 10);
const devices = parseInt(process.argv[3], 10);

function* chunks() {
  let chunk = '';
  for (let i = 1; i <= rows; i++) {
    chunk += `${1 + (i * 7919) % devices}\t${i}\t${i + 0.5}\n`;
    if (i % 64 === 0 || i === rows) {
      yield chunk;
      chunk = '';
    }
  }
}

(async () => {
  const sql = postgres({ max: 2, idle_timeout: 0, connect_timeout: 10, onnotice: () => {} });
  try {
    const stream = await sql`COPY telemetry (device_id, ts, value) FROM STDIN`.writable();
    // resolves once the stream finished: postgres.js calls its final callback at CommandComplete
    await pipeline(Readable.from(chunks()), stream);
    const [{ count }] = await sql`SELECT count(*) AS count FROM telemetry`;
    console.log(JSON.stringify({ ok: true, written: rows, count: Number(count) }));
  } finally {
    await sql.end({ timeout: 5 });
  }
})().catch((e) => {
  console.error(e && e.stack ? e.stack : e, e && e.code ? `code ${e.code}` : '');
  process.exit(1);
});
