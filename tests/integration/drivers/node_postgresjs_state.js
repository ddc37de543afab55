// postgres.js (npm "postgres") session settings and LISTEN through pgvalve in transaction mode
// (pool_size 2). postgres.js sends every query with the extended protocol and named prepared
// statements (prepare: true). Client A runs `SET work_mem = '9MB'`, then its queries while two
// holder connections keep the other server busy, so A lands on both servers in turn: A must see
// 9MB on each, a plain client the default. Then sql.listen() must receive a NOTIFY.
// Connection settings come from PGHOST / PGPORT / PGUSER / PGPASSWORD / PGDATABASE.
// Usage: node node_postgresjs_state.js DEFAULT_WORK_MEM ROUNDS      exit 0 when every check passed
'use strict';

const postgres = require('postgres');

const defaultWorkMem = process.argv[2];
const rounds = parseInt(process.argv[3] || '6', 10);

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

function open() {
  // one connection per instance: A's queries all use the same client connection
  return postgres({ max: 1, idle_timeout: 0, connect_timeout: 10, onnotice: () => {} });
}

(async () => {
  const a = open();
  const plain = open();
  const holders = [open(), open()];
  try {
    await a`SET work_mem = '9MB'`;
    await a`SET statement_timeout = '33s'`;
    const aPids = new Set();
    let lastA = -1;
    for (let r = 0; r < rounds; r++) {
      const held = [];
      for (const h of holders) {
        await h`begin`;
        held.push((await h`select pg_backend_pid() as pid`)[0].pid);
      }
      check(held[0] !== held[1], `holders on two servers: ${held}`);
      const free = held[0] === lastA ? 1 : 0;
      await holders[free]`commit`;
      const pid = (await a`select pg_backend_pid() as pid`)[0].pid;
      check(pid !== held[1 - free], 'A on the server a holder has');
      aPids.add(pid);
      lastA = pid;
      const wm = (await a`show work_mem`)[0].work_mem;
      check(wm === '9MB', `A round ${r} work_mem ${wm} on server ${pid}`);
      const st = (await a`show statement_timeout`)[0].statement_timeout;
      check(st === '33s', `A round ${r} statement_timeout ${st} on server ${pid}`);
      const pwm = (await plain`show work_mem`)[0].work_mem;
      check(pwm === defaultWorkMem, `plain client round ${r} saw work_mem ${pwm}`);
      await holders[1 - free]`commit`;
    }
    check(aPids.size === 2, `A ran on ${[...aPids]}, expected both servers`);

    const got = [];
    await a.listen('ch_pgjs', (payload) => got.push(payload));
    await plain.notify('ch_pgjs', 'hello');
    await plain`NOTIFY ch_pgjs, 'again'`;
    const end = Date.now() + 5000;
    while (got.length < 2 && Date.now() < end) await new Promise((res) => setTimeout(res, 20));
    check(got.length === 2 && got[0] === 'hello' && got[1] === 'again',
      `listen got ${JSON.stringify(got)}`);
    const wm = (await a`show work_mem`)[0].work_mem;
    check(wm === '9MB', `A work_mem after listen ${wm}`);
    console.log(`OK a_server_pids=${[...aPids].join(',')}`);
  } finally {
    await Promise.all([a, plain, ...holders].map((s) => s.end({ timeout: 2 })));
  }
})().catch((e) => {
  console.error(`FAILED: ${e.stack || e}`);
  process.exit(1);
});
