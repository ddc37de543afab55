// pgxaudit runs one scenario of pgx v4 (github.com/jackc/pgx/v4, pgxpool) against a DSN and
// prints what it saw as one JSON object on stdout. tests/integration/test_go_drivers.py runs
// each scenario against PostgreSQL directly and through pgvalve and compares the two answers
// (or, where there is no direct equivalent, checks literal values).
//
//	pgxaudit SCENARIO DSN [ARGS...]
//
// Everything the scenario observes goes into the JSON: values, command tags, SQLSTATEs of
// errors ("pg:23514"), whether pgx closed the connection. Times are reported only as booleans
// against a bound, so that the two runs compare equal. Every wait is bounded by a context.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgconn/stmtcache"
	"github.com/jackc/pgtype"
	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

type result map[string]interface{}

// errString names an error the same way whichever server answered: the SQLSTATE of a server
// error, "timeout" for a context deadline, otherwise the error's text.
func errString(err error) string {
	if err == nil {
		return ""
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return "pg:" + pgErr.Code
	}
	if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return "timeout"
	}
	return err.Error()
}

// errMessage is the message of a server error (to tell pgvalve's refusals, which start
// with "pgvalve:", from PostgreSQL's).
func errMessage(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	return ""
}

func must(err error, what string) {
	if err != nil {
		fail(fmt.Errorf("%s: %w", what, err))
	}
}

func fail(err error) {
	out, _ := json.Marshal(result{"fatal": errString(err), "message": errMessage(err),
		"detail": err.Error()})
	fmt.Println(string(out))
	os.Exit(0)
}

func bounded(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// acquireN checks out n distinct connections of the pool (each a client connection of its own).
func acquireN(ctx context.Context, pool *pgxpool.Pool, n int) []*pgxpool.Conn {
	conns := make([]*pgxpool.Conn, n)
	for i := range conns {
		c, err := pool.Acquire(ctx)
		must(err, "acquire")
		conns[i] = c
	}
	return conns
}

func newPool(ctx context.Context, dsn string, n int, simple bool) *pgxpool.Pool {
	cfg, err := pgxpool.ParseConfig(dsn)
	must(err, "parse dsn")
	cfg.MaxConns = int32(n)
	cfg.MinConns = 0
	cfg.HealthCheckPeriod = time.Hour
	cfg.ConnConfig.PreferSimpleProtocol = simple
	pool, err := pgxpool.ConnectConfig(ctx, cfg)
	must(err, "connect pool")
	return pool
}

// parallel runs f(k) for k in [0, n) each on a goroutine and returns their results in order.
func parallel(n int, f func(k int) interface{}) []interface{} {
	out := make([]interface{}, n)
	var wg sync.WaitGroup
	for k := 0; k < n; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			out[k] = f(k)
		}(k)
	}
	wg.Wait()
	return out
}

func exec(ctx context.Context, c interface {
	Exec(context.Context, string, ...interface{}) (pgconn.CommandTag, error)
}, sql string, args ...interface{}) string {
	tag, err := c.Exec(ctx, sql, args...)
	if err != nil {
		return errString(err)
	}
	return string(tag)
}

type querier interface {
	QueryRow(context.Context, string, ...interface{}) pgx.Row
	Query(context.Context, string, ...interface{}) (pgx.Rows, error)
	Exec(context.Context, string, ...interface{}) (pgconn.CommandTag, error)
}

func scalar(ctx context.Context, c querier, sql string, args ...interface{}) interface{} {
	var v interface{}
	if err := c.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		return errString(err)
	}
	return normalize(v)
}

// normalize makes decoded values JSON-comparable.
func normalize(v interface{}) interface{} {
	switch x := v.(type) {
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case pgtype.Numeric:
		b, _ := x.EncodeText(nil, nil)
		return string(b)
	case [16]byte:
		return fmt.Sprintf("%x", x[:])
	case []byte:
		return fmt.Sprintf("\\x%x", x)
	case float32:
		return float64(x)
	}
	return v
}

// refusal names an error with pgvalve's message when pgvalve refused (its messages start with
// "pgvalve:"; PostgreSQL's never do), else as errString.
func refusal(err error) string {
	if m := errMessage(err); strings.HasPrefix(m, "pgvalve:") {
		return errString(err) + " " + m
	}
	return errString(err)
}

func values(ctx context.Context, c querier, sql string, args ...interface{}) interface{} {
	rows, err := c.Query(ctx, sql, args...)
	if err != nil {
		return refusal(err)
	}
	defer rows.Close()
	var out []interface{}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return errString(err)
		}
		for i := range vals {
			vals[i] = normalize(vals[i])
		}
		out = append(out, vals)
	}
	if rows.Err() != nil {
		return refusal(rows.Err())
	}
	return out
}

// withTable opens a scenario: a bounded context, a pool of n connections (simple: the simple
// protocol) and its table made anew; done closes the pool and the context.
func withTable(dsn string, limit time.Duration, n int, simple bool, table, ddl string) (context.Context, *pgxpool.Pool, func()) {
	ctx, cancel := bounded(limit)
	pool := newPool(ctx, dsn, n, simple)
	setupTable(ctx, pool, table, ddl)
	return ctx, pool, func() {
		pool.Close()
		cancel()
	}
}

func setupTable(ctx context.Context, c querier, name, ddl string) {
	_, err := c.Exec(ctx, fmt.Sprintf("drop table if exists %s", name))
	must(err, "drop "+name)
	_, err = c.Exec(ctx, fmt.Sprintf("create table %s (%s)", name, ddl))
	must(err, "create "+name)
}

// --- scenarios ---------------------------------------------------------------------------------

// pool: 8 pgxpool connections, each with its own statement cache (named statements lrupsc_N_M
// prepared on its connection, or the unnamed statement with statement_cache_mode=describe),
// doing QueryRow/Query with parameters and Exec, all at once.
func scenarioPool(dsn string) result {
	ctx, pool, done := withTable(dsn, 40*time.Second, 8, false, "go_pool", "worker int, i int, ts timestamptz, note text")
	defer done()
	conns := acquireN(ctx, pool, 8)
	workers := parallel(8, func(k int) interface{} {
		c := conns[k]
		defer c.Release()
		texts := make([]string, 6)
		for j := range texts {
			texts[j] = fmt.Sprintf("select $1::int + %d", j)
		}
		rand.New(rand.NewSource(int64(k))).Shuffle(len(texts), func(a, b int) {
			texts[a], texts[b] = texts[b], texts[a]
		})
		sum, rowsum, tags := 0, int64(0), map[string]int{}
		for i := 0; i < 15; i++ {
			for _, t := range texts {
				var v int
				if err := c.QueryRow(ctx, t, i).Scan(&v); err != nil {
					return result{"error": errString(err), "at": t}
				}
				sum += v
			}
			rows, err := c.Query(ctx, "select g, g * $2::int8 from generate_series(1, $1::int) g",
				i%5+1, int64(k))
			if err != nil {
				return result{"error": errString(err), "at": "query"}
			}
			for rows.Next() {
				var g int32
				var p int64
				if err := rows.Scan(&g, &p); err != nil {
					return result{"error": errString(err), "at": "scan"}
				}
				rowsum += int64(g) + p
			}
			if rows.Err() != nil {
				return result{"error": errString(rows.Err()), "at": "rows"}
			}
			tags[exec(ctx, c, "insert into go_pool values ($1, $2, $3, $4)", k, i,
				time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC), fmt.Sprintf("w%d", k))]++
		}
		// A statement prepared by name, the same name on every connection with a text of its
		// own, used, deallocated and prepared again under that name with another text (pgx
		// runs a name as SQL text in statement_cache_mode=describe).
		var byName []int
		var again string
		if c.Conn().StatementCache().Mode() == stmtcache.ModeDescribe {
			goto done
		}
		if _, err := c.Conn().Prepare(ctx, "ins", fmt.Sprintf("select $1::int + %d", 1000*k)); err != nil {
			return result{"error": errString(err), "at": "prepare"}
		}
		for i := 0; i < 3; i++ {
			var v int
			if err := c.QueryRow(ctx, "ins", i).Scan(&v); err != nil {
				return result{"error": errString(err), "at": "ins"}
			}
			byName = append(byName, v)
		}
		if err := c.Conn().Deallocate(ctx, "ins"); err != nil {
			return result{"error": errString(err), "at": "deallocate"}
		}
		if _, err := c.Conn().Prepare(ctx, "ins", "select $1::text || 'x'"); err != nil {
			return result{"error": errString(err), "at": "prepare again"}
		}
		if err := c.QueryRow(ctx, "ins", "y").Scan(&again); err != nil {
			return result{"error": errString(err), "at": "ins again"}
		}
	done:
		var named int
		// The server holds prepared statements for this client (pgx's own names directly,
		// pgvalve's pgv_* through pgvalve): 0 only in statement_cache_mode=describe.
		if err := c.QueryRow(ctx, "select count(*) from pg_prepared_statements").Scan(&named); err != nil {
			return result{"error": errString(err), "at": "pg_prepared_statements"}
		}
		return result{"sum": sum, "rowsum": rowsum, "tags": tags, "cache": c.Conn().StatementCache().Len(),
			"server_prepared": named > 0, "by_name": byName, "by_name_again": again}
	})
	var count int
	must(pool.QueryRow(ctx, "select count(*) from go_pool where note = 'w' || worker").Scan(&count), "count")
	return result{"workers": workers, "rows": count}
}

// invalidate: the statements pgx prepared on 8 connections, then ALTER TABLE ... ADD COLUMN
// changes what they return. PostgreSQL answers each connection's next use of its statement
// with 0A000 "cached plan must not change result type"; pgx then deallocates it and prepares
// the text again at the next use (it recognises only that error).
func scenarioInvalidate(dsn string) result {
	ctx, pool, done := withTable(dsn, 40*time.Second, 8, false, "go_inv", "a int, b int")
	defer done()
	_, err := pool.Exec(ctx, "insert into go_inv values (1, 2)")
	must(err, "insert")
	conns := acquireN(ctx, pool, 8)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	use := func(c *pgxpool.Conn) interface{} {
		rows, err := c.Query(ctx, "select * from go_inv where a = $1", 1)
		if err != nil {
			return errString(err)
		}
		var vals []interface{}
		for rows.Next() {
			vals, err = rows.Values()
			if err != nil {
				rows.Close()
				return errString(err)
			}
		}
		rows.Close()
		if rows.Err() != nil {
			return errString(rows.Err())
		}
		return vals
	}
	out := result{}
	out["before"] = parallel(8, func(k int) interface{} { return use(conns[k]) })
	other, err := pgx.Connect(ctx, dsn)
	must(err, "connect")
	out["alter"] = exec(ctx, other, "alter table go_inv add column c int default 3")
	other.Close(ctx)
	var after []interface{}
	for k := 0; k < 8; k++ {
		after = append(after, []interface{}{use(conns[k]), use(conns[k]), use(conns[k])})
	}
	out["after"] = after
	return out
}

// batch: SendBatch sends its statements with one Sync (after describing the statements it has
// not prepared yet): results in order, an error in the middle rolls the whole batch back, a
// batch in a transaction, and 8 connections batching at once.
func scenarioBatch(dsn string) result {
	ctx, pool, done := withTable(dsn, 40*time.Second, 8, false, "go_batch", "device_id int, value float8 check (value >= 0)")
	defer done()
	out := result{}
	c, err := pool.Acquire(ctx)
	must(err, "acquire")
	readBatch := func(b *pgx.Batch, kinds string) []interface{} {
		br := c.SendBatch(ctx, b)
		var got []interface{}
		for _, k := range kinds {
			if k == 'e' {
				tag, err := br.Exec()
				if err != nil {
					got = append(got, errString(err))
				} else {
					got = append(got, string(tag))
				}
			} else {
				var v interface{}
				if err := br.QueryRow().Scan(&v); err != nil {
					got = append(got, errString(err))
				} else {
					got = append(got, normalize(v))
				}
			}
		}
		got = append(got, "close:"+errString(br.Close()))
		return got
	}
	b := &pgx.Batch{}
	b.Queue("insert into go_batch values ($1, $2)", 1, 1.0)
	b.Queue("insert into go_batch values ($1, $2)", 1, 2.0)
	b.Queue("insert into go_batch values ($1, $2), ($1, $3)", 2, 3.0, 4.0)
	b.Queue("select count(*) from go_batch where device_id = $1", 1)
	b.Queue("select $1::text || '!'", "batch")
	out["first"] = readBatch(b, "eeeqq")
	b = &pgx.Batch{}
	b.Queue("insert into go_batch values ($1, $2)", 3, 1.0)
	b.Queue("insert into go_batch values ($1, $2)", 3, -1.0)
	b.Queue("insert into go_batch values ($1, $2)", 3, 2.0)
	out["failing"] = readBatch(b, "eee")
	out["after_failing"] = scalar(ctx, c, "select count(*) from go_batch where device_id = $1", 3)
	tx, err := c.Begin(ctx)
	must(err, "begin")
	b = &pgx.Batch{}
	b.Queue("insert into go_batch values ($1, $2)", 4, 1.0)
	b.Queue("select count(*) from go_batch where device_id = $1", 4)
	br := tx.SendBatch(ctx, b)
	tag, err1 := br.Exec()
	var n int
	err2 := br.QueryRow().Scan(&n)
	must(br.Close(), "batch close")
	out["in_tx"] = []interface{}{string(tag), errString(err1), n, errString(err2),
		"commit:" + errString(tx.Commit(ctx))}
	out["total"] = scalar(ctx, c, "select count(*) from go_batch")
	// A large batch: 3000 statements before one Sync.
	b = &pgx.Batch{}
	for i := 0; i < 3000; i++ {
		b.Queue("insert into go_batch values ($1, $2)", 5, float64(i))
	}
	br = c.SendBatch(ctx, b)
	var bigErr error
	for i := 0; i < 3000 && bigErr == nil; i++ {
		_, bigErr = br.Exec()
	}
	out["big"] = []interface{}{errString(bigErr), errString(br.Close()),
		scalar(ctx, c, "select count(*) from go_batch where device_id = $1", 5)}
	c.Release()

	conns := acquireN(ctx, pool, 8)
	out["parallel"] = parallel(8, func(k int) interface{} {
		c := conns[k]
		defer c.Release()
		var counts []int
		for i := 0; i < 10; i++ {
			b := &pgx.Batch{}
			for j := 0; j < 5; j++ {
				b.Queue("insert into go_batch values ($1, $2)", 100+k, float64(j))
			}
			b.Queue("select count(*) from go_batch where device_id = $1", 100+k)
			br := c.SendBatch(ctx, b)
			for j := 0; j < 5; j++ {
				if _, err := br.Exec(); err != nil {
					br.Close()
					return errString(err)
				}
			}
			var n int
			if err := br.QueryRow().Scan(&n); err != nil {
				br.Close()
				return errString(err)
			}
			if err := br.Close(); err != nil {
				return errString(err)
			}
			counts = append(counts, n)
		}
		return counts
	})
	return out
}

// tx: BeginTx with isolation and access modes, Rollback, savepoints (nested Begin), errors in
// the middle of a transaction and the connection after them, on 8 connections at once.
func scenarioTx(dsn string) result {
	ctx, pool, done := withTable(dsn, 40*time.Second, 8, false, "go_tx", "worker int, v int check (v >= 0)")
	defer done()
	conns := acquireN(ctx, pool, 8)
	workers := parallel(8, func(k int) interface{} {
		c := conns[k]
		defer c.Release()
		var steps []interface{}
		add := func(v ...interface{}) { steps = append(steps, v...) }

		tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable, AccessMode: pgx.ReadOnly})
		if err != nil {
			return errString(err)
		}
		add(scalar(ctx, tx, "show transaction_isolation"), scalar(ctx, tx, "show transaction_read_only"))
		add(exec(ctx, tx, "insert into go_tx values ($1, 1)", k))
		add(scalar(ctx, tx, "select $1::int", k))
		add("rollback:" + errString(tx.Rollback(ctx)))

		tx, err = c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, DeferrableMode: pgx.NotDeferrable})
		if err != nil {
			return errString(err)
		}
		add(scalar(ctx, tx, "show transaction_isolation"), scalar(ctx, tx, "show transaction_deferrable"))
		add("commit:" + errString(tx.Commit(ctx)))
		add(scalar(ctx, c, "show transaction_isolation"), scalar(ctx, c, "show transaction_read_only"))

		// Savepoints: pgx's nested Begin is SAVEPOINT sp_N; Rollback is ROLLBACK TO SAVEPOINT.
		tx, err = c.Begin(ctx)
		if err != nil {
			return errString(err)
		}
		add(exec(ctx, tx, "insert into go_tx values ($1, $2)", k, 1))
		sp, _ := tx.Begin(ctx)
		add(exec(ctx, sp, "insert into go_tx values ($1, $2)", k, 2))
		add("sp_rollback:" + errString(sp.Rollback(ctx)))
		sp, _ = tx.Begin(ctx)
		add(exec(ctx, sp, "insert into go_tx values ($1, $2)", k, 3))
		inner, _ := sp.Begin(ctx)
		add(exec(ctx, inner, "insert into go_tx values ($1, $2)", k, -1)) // check violation
		add(scalar(ctx, inner, "select 1"))                               // 25P02
		add("inner_rollback:" + errString(inner.Rollback(ctx)))
		add(scalar(ctx, sp, "select count(*) from go_tx where worker = $1", k))
		add("sp_commit:" + errString(sp.Commit(ctx)))
		add("commit:" + errString(tx.Commit(ctx)))

		// Rollback of a whole transaction.
		tx, _ = c.Begin(ctx)
		add(exec(ctx, tx, "insert into go_tx values ($1, $2)", k, 10))
		add("rollback:" + errString(tx.Rollback(ctx)))

		// Statements that fail to prepare (pgx's Parse/Describe/Sync of a named statement):
		// outside a transaction the next one works, inside one the transaction is aborted.
		add(scalar(ctx, c, "selec $1::int", k))
		add(scalar(ctx, c, "select nope from go_tx where worker = $1", k))
		add(scalar(ctx, c, "select $1::int + 100", k))
		tx, _ = c.Begin(ctx)
		add(exec(ctx, tx, "insert into go_tx values ($1, $2)", k, 30))
		add(scalar(ctx, tx, "select nope from go_tx where worker = $1", k))
		add(scalar(ctx, tx, "select $1::int + 200", k))
		add("rollback:" + errString(tx.Rollback(ctx)))

		// An error in the middle: the rest of the transaction fails, Commit rolls back, and
		// the connection goes on.
		tx, _ = c.Begin(ctx)
		add(exec(ctx, tx, "insert into go_tx values ($1, $2)", k, 20))
		add(scalar(ctx, tx, "select 1 / ($1::int - $1::int)", k)) // 22012
		add(scalar(ctx, tx, "select $1::int", k))                 // 25P02
		add("commit:" + errString(tx.Commit(ctx)))
		add(scalar(ctx, c, "select $1::int * 2", k))
		add(scalar(ctx, c, "select 1 / 0"))
		add(scalar(ctx, c, "select $1::int * 3", k))

		var vs []int32
		if err := c.QueryRow(ctx, "select coalesce(array_agg(v order by v), '{}') from go_tx where worker = $1",
			k).Scan(&vs); err != nil {
			return errString(err)
		}
		add(vs)
		add("tx_status:" + string(c.Conn().PgConn().TxStatus()))
		return steps
	})
	return result{"workers": workers}
}

// cancel: a context that times out during pg_sleep (pgx closes that connection and sends a
// CancelRequest), statement_timeout (57014, the connection goes on), and other connections'
// queries meanwhile.
func scenarioCancel(dsn string) result {
	ctx, pool, done := withTable(dsn, 40*time.Second, 8, false, "go_cancel", "k int")
	defer done()
	conns := acquireN(ctx, pool, 8)
	started := time.Now()
	workers := parallel(8, func(k int) interface{} {
		c := conns[k]
		if k < 3 {
			qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer qcancel()
			t0 := time.Now()
			var v interface{}
			err := c.QueryRow(qctx, "select pg_sleep(5)").Scan(&v)
			res := result{"error": errString(err), "returned_at_once": time.Since(t0) < 2*time.Second,
				"closed": c.Conn().IsClosed()}
			c.Release() // a closed connection leaves the pool
			// The pool goes on with a connection of its own.
			res["after"] = scalar(ctx, pool, "select $1::int", k)
			return res
		}
		if k == 4 {
			// A context that expires in a transaction: pgx closes the connection, and the
			// transaction's insert is rolled back.
			defer c.Release()
			res := result{}
			tx, err := c.Begin(ctx)
			if err != nil {
				return errString(err)
			}
			res["insert"] = exec(ctx, tx, "insert into go_cancel values ($1)", k)
			qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer qcancel()
			res["sleep"] = exec(qctx, tx, "select pg_sleep(5)")
			res["closed"] = c.Conn().IsClosed()
			res["rollback"] = errString(tx.Rollback(ctx))
			return res
		}
		defer c.Release()
		if k == 3 {
			res := result{}
			res["set"] = exec(ctx, c, "set statement_timeout = 200")
			res["sleep"] = scalar(ctx, c, "select pg_sleep(3)")
			res["after"] = scalar(ctx, c, "select $1::int + 1", k)
			res["setting"] = scalar(ctx, c, "show statement_timeout")
			res["reset"] = exec(ctx, c, "reset statement_timeout")
			res["closed"] = c.Conn().IsClosed()
			// A cancelled pgx Exec inside a transaction: the connection is closed and the
			// transaction is gone (checked by the test on the server).
			return res
		}
		total := 0
		for i := 0; i < 5; i++ {
			var v int
			if err := c.QueryRow(ctx, "select $1::int from pg_sleep(0.05)", i).Scan(&v); err != nil {
				return errString(err)
			}
			total += v
		}
		return total
	})
	elapsed := time.Since(started)
	// The server no longer sleeps for the cancelled queries.
	var sleeping int
	deadline := time.Now().Add(3 * time.Second)
	for {
		must(pool.QueryRow(ctx, "select count(*) from pg_stat_activity where query = 'select pg_sleep(5)' "+
			"and state = 'active'").Scan(&sleeping), "pg_stat_activity")
		if sleeping == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return result{"workers": workers, "within_3s": elapsed < 3*time.Second, "still_sleeping": sleeping,
		"rolled_back": scalar(ctx, pool, "select count(*) from go_cancel")}
}

// session: what a pgx connection sets up for itself and relies on across transactions on
// pooled servers: startup parameters, ParameterStatus after SET, search_path with the same
// statement text naming another schema's table, time zones, notices, Ping (an empty query),
// and an error after some rows.
func scenarioSession(dsn string) result {
	ctx, cancel := bounded(40 * time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, dsn)
	must(err, "connect")
	for _, q := range []string{
		"drop schema if exists go_s0 cascade", "drop schema if exists go_s1 cascade",
		"create schema go_s0", "create schema go_s1",
		"create table go_s0.go_sp (id int, v text)", "create table go_s1.go_sp (id int, v int, w int)",
		"insert into go_s0.go_sp values (1, 'zero')", "insert into go_s1.go_sp values (1, 100, 7)",
	} {
		_, err := admin.Exec(ctx, q)
		must(err, q)
	}
	admin.Close(ctx)
	cfg, err := pgxpool.ParseConfig(dsn)
	must(err, "parse")
	cfg.MaxConns = 8
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = "300"
	cfg.ConnConfig.RuntimeParams["application_name"] = "gosvc"
	var mu sync.Mutex
	notices := map[uint32][]string{}
	cfg.ConnConfig.OnNotice = func(c *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		defer mu.Unlock()
		notices[c.PID()] = append(notices[c.PID()], n.Severity+":"+n.Message)
	}
	pool, err := pgxpool.ConnectConfig(ctx, cfg)
	must(err, "pool")
	defer pool.Close()
	conns := acquireN(ctx, pool, 8)
	workers := parallel(8, func(k int) interface{} {
		c := conns[k]
		defer c.Release()
		pg := c.Conn().PgConn()
		out := result{}
		params := map[string]string{}
		for _, p := range []string{"server_version", "client_encoding", "DateStyle", "IntervalStyle", "TimeZone",
			"integer_datetimes", "standard_conforming_strings", "application_name", "is_superuser",
			"session_authorization", "server_encoding"} {
			params[p] = pg.ParameterStatus(p)
		}
		out["startup"] = params
		out["ping"] = errString(c.Ping(ctx))
		out["statement_timeout"] = scalar(ctx, c, "show statement_timeout")
		out["sleep_over_timeout"] = scalar(ctx, c, "select pg_sleep(2)")
		zone := []string{"Asia/Tokyo", "America/New_York"}[k%2]
		out["set_tz"] = exec(ctx, c, "set timezone = '"+zone+"'")
		out["set_app"] = exec(ctx, c, "set application_name = 'gosvc-"+strconv.Itoa(k)+"'")
		out["reported"] = []string{pg.ParameterStatus("TimeZone"), pg.ParameterStatus("application_name")}
		out["set_config"] = scalar(ctx, c, "select set_config('go.tenant', $1, false)", "t"+strconv.Itoa(k))
		out["set_path"] = exec(ctx, c, fmt.Sprintf("set search_path = go_s%d, public", k%2))
		var steps []interface{}
		for i := 0; i < 4; i++ {
			// Between these, other clients' transactions run on the same servers.
			steps = append(steps, scalar(ctx, c, "select '2026-01-01 00:00:00+00'::timestamptz::text"),
				scalar(ctx, c, "select current_setting('go.tenant')"),
				scalar(ctx, c, "show application_name"),
				values(ctx, c, "select * from go_sp where id = $1", 1))
			time.Sleep(20 * time.Millisecond)
		}
		out["steps"] = steps
		out["notice"] = exec(ctx, c, fmt.Sprintf("do $$ begin raise notice 'hello %%', %d; end $$", k))
		out["rows_then_error"] = values(ctx, c, "select 10 / (3 - g) from generate_series(1, 5) g")
		out["after_error"] = scalar(ctx, c, "select $1::int", k)
		out["reset"] = exec(ctx, c, "reset all")
		out["after_reset"] = []interface{}{scalar(ctx, c, "show statement_timeout"), scalar(ctx, c, "show application_name"),
			scalar(ctx, c, "show search_path")}
		out["reported_after_reset"] = pg.ParameterStatus("application_name")
		mu.Lock()
		out["notices"] = notices[pg.PID()]
		mu.Unlock()
		return out
	})
	return result{"workers": workers}
}

// queue: both servers of pool_size 2 held by open transactions; a third connection's insert
// waits for a server and its context expires meanwhile (pgx closes the connection and sends a
// CancelRequest). The insert must never run, also once servers are free again.
func scenarioQueue(dsn string) result {
	ctx, pool, done := withTable(dsn, 30*time.Second, 4, false, "go_queue", "tag text")
	defer done()
	conns := acquireN(ctx, pool, 4)
	out := result{}
	var txs []pgx.Tx
	for i := 0; i < 2; i++ {
		tx, err := conns[i].Begin(ctx)
		must(err, "begin")
		_, err = tx.Exec(ctx, "insert into go_queue values ($1)", fmt.Sprintf("held%d", i))
		must(err, "insert")
		txs = append(txs, tx)
	}
	qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	out["waiting"] = exec(qctx, conns[2], "insert into go_queue values ($1)", "timed-out")
	qcancel()
	out["closed"] = conns[2].Conn().IsClosed()
	conns[2].Release()
	for _, tx := range txs {
		must(tx.Commit(ctx), "commit")
	}
	time.Sleep(300 * time.Millisecond)
	out["rows"] = values(ctx, conns[3], "select tag from go_queue order by tag")
	conns[0].Release()
	conns[1].Release()
	conns[3].Release()
	return out
}

// listen: LISTEN on one pgx connection, WaitForNotification, NOTIFY and pg_notify() with a
// parameter from pool connections; notifications that arrive during a query; UNLISTEN.
func scenarioListen(dsn string) result {
	ctx, cancel := bounded(40 * time.Second)
	defer cancel()
	out := result{}
	l, err := pgx.Connect(ctx, dsn)
	must(err, "connect listener")
	defer l.Close(context.Background())
	pool := newPool(ctx, dsn, 4, false)
	defer pool.Close()
	out["listen"] = exec(ctx, l, "listen ingest")
	out["listen2"] = exec(ctx, l, `listen "Ingest.Other"`)
	notified := parallel(3, func(k int) interface{} {
		return exec(ctx, pool, "select pg_notify('ingest', $1)", fmt.Sprintf("p%d", k))
	})
	out["notify"] = notified
	out["notify_plain"] = exec(ctx, pool, `notify "Ingest.Other", 'plain'`)
	var got []string
	for i := 0; i < 4; i++ {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := l.WaitForNotification(wctx)
		wcancel()
		if err != nil {
			got = append(got, errString(err))
			break
		}
		got = append(got, n.Channel+"/"+n.Payload)
	}
	sort.Strings(got)
	out["heard"] = got
	out["query_after"] = scalar(ctx, l, "select $1::int", 7)

	// A notification sent while the listener runs a query is kept for WaitForNotification.
	done := make(chan interface{})
	go func() {
		time.Sleep(100 * time.Millisecond)
		done <- exec(ctx, pool, "notify ingest, 'during'")
	}()
	out["slow_query"] = scalar(ctx, l, "select 1 from pg_sleep(0.5)")
	out["notify_during"] = <-done
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	n, err := l.WaitForNotification(wctx)
	wcancel()
	if err != nil {
		out["heard_during"] = errString(err)
	} else {
		out["heard_during"] = n.Channel + "/" + n.Payload
	}

	// Many notifications, and the largest payload: all arrive, in the order they were sent
	// (200 statements, then one transaction of 300, then one of 7999 bytes).
	bulk := func() interface{} {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return errString(err)
		}
		defer c.Release()
		for i := 0; i < 200; i++ {
			if _, err := c.Exec(ctx, "select pg_notify('ingest', $1)", fmt.Sprintf("b%d", i)); err != nil {
				return errString(err)
			}
		}
		tx, err := c.Begin(ctx)
		if err != nil {
			return errString(err)
		}
		for i := 200; i < 500; i++ {
			if _, err := tx.Exec(ctx, "select pg_notify('ingest', $1)", fmt.Sprintf("b%d", i)); err != nil {
				return errString(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return errString(err)
		}
		_, err = c.Exec(ctx, "select pg_notify('ingest', repeat('x', 7999))")
		return errString(err)
	}
	out["bulk_sent"] = bulk()
	var inOrder, big int
	for i := 0; i < 501; i++ {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := l.WaitForNotification(wctx)
		wcancel()
		if err != nil {
			break
		}
		if i < 500 && n.Payload == fmt.Sprintf("b%d", i) {
			inOrder++
		}
		if i == 500 && n.Payload == strings.Repeat("x", 7999) {
			big++
		}
	}
	out["bulk_heard_in_order"] = inOrder
	out["big_payload"] = big
	out["unlisten"] = exec(ctx, l, "unlisten ingest")
	out["notify_after_unlisten"] = exec(ctx, pool, "notify ingest, 'unheard'")
	out["notify_other"] = exec(ctx, pool, `notify "Ingest.Other", 'still'`)
	wctx, wcancel = context.WithTimeout(ctx, 5*time.Second)
	n, err = l.WaitForNotification(wctx)
	wcancel()
	if err != nil {
		out["heard_other"] = errString(err)
	} else {
		out["heard_other"] = n.Channel + "/" + n.Payload
	}
	wctx, wcancel = context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = l.WaitForNotification(wctx)
	wcancel()
	out["nothing_more"] = errString(err)
	out["usable_after_wait_timeout"] = scalar(ctx, l, "select 'ok'")
	return out
}

// copyRows makes n rows of go_copy's columns for device `dev`.
func copyRows(dev int32, n int, nullAt int) [][]interface{} {
	rows := make([][]interface{}, n)
	for i := range rows {
		var d interface{} = dev
		if i == nullAt {
			d = nil
		}
		rows[i] = []interface{}{d, time.Date(2026, 3, 1, 12, 0, i%60, i*1000, time.UTC), float64(i) / 4,
			map[string]interface{}{"seq": i, "fw": "1.2"}, []byte{byte(i), 0, 255}}
	}
	return rows
}

var copyCols = []string{"device_id", "ts", "value", "meta", "raw"}

// copy: CopyFrom (binary COPY) in and out of transactions, a row that fails, and 4 connections
// copying at once.
func scenarioCopy(dsn string) result {
	ctx, pool, done := withTable(dsn, 40*time.Second, 8, false, "go_copy", "device_id int not null, ts timestamptz, value float8, meta jsonb, raw bytea")
	defer done()
	out := result{}
	c, err := pool.Acquire(ctx)
	must(err, "acquire")
	copyFrom := func(q interface {
		CopyFrom(context.Context, pgx.Identifier, []string, pgx.CopyFromSource) (int64, error)
	}, rows [][]interface{}) interface{} {
		n, err := q.CopyFrom(ctx, pgx.Identifier{"go_copy"}, copyCols, pgx.CopyFromRows(rows))
		if err != nil {
			return errString(err)
		}
		return n
	}
	out["plain"] = copyFrom(c, copyRows(1, 2000, -1))
	out["summary"] = summary(ctx, c)
	tx, _ := c.Begin(ctx)
	out["in_tx_rolled_back"] = copyFrom(tx, copyRows(2, 10, -1))
	out["rollback"] = errString(tx.Rollback(ctx))
	tx, _ = c.Begin(ctx)
	out["in_tx"] = copyFrom(tx, copyRows(3, 10, -1))
	out["in_tx_count"] = scalar(ctx, tx, "select count(*) from go_copy where device_id = $1", 3)
	out["commit"] = errString(tx.Commit(ctx))
	out["failing"] = copyFrom(c, copyRows(4, 500, 250)) // NULL device_id: 23502
	out["after_failing"] = scalar(ctx, c, "select count(*) from go_copy where device_id = $1", 4)
	out["tx_status"] = string(c.Conn().PgConn().TxStatus())
	c.Release()
	conns := acquireN(ctx, pool, 4)
	out["parallel"] = parallel(4, func(k int) interface{} {
		defer conns[k].Release()
		return copyFrom(conns[k], copyRows(int32(10+k), 500, -1))
	})
	// A large COPY: 60000 rows (about 5 MB of binary COPY data).
	big := copyRows(20, 60000, -1)
	for i := range big {
		big[i][4] = []byte(strings.Repeat("x", 40) + strconv.Itoa(i))
	}
	out["big"] = copyFrom(pool, big)
	out["final"] = summary(ctx, pool)
	return out
}

func summary(ctx context.Context, c querier) interface{} {
	return values(ctx, c, "select device_id, count(*), sum(value), min(ts), max(ts), "+
		"sum((meta->>'seq')::int), sum(get_byte(raw, 0)) from go_copy group by 1 order by 1")
}

// simple: PreferSimpleProtocol (pgx interpolates the parameters) on 8 connections, its
// SendBatch (one multi-statement Query), transactions, and QuerySimpleProtocol(true) per query.
func scenarioSimple(dsn string) result {
	ctx, pool, done := withTable(dsn, 40*time.Second, 8, true, "go_simple", "device_id int, value float8 check (value >= 0), note text")
	defer done()
	conns := acquireN(ctx, pool, 8)
	workers := parallel(8, func(k int) interface{} {
		c := conns[k]
		defer c.Release()
		var steps []interface{}
		add := func(v ...interface{}) { steps = append(steps, v...) }
		add(scalar(ctx, c, "select $1::int + $2::int", k, 10))
		add(scalar(ctx, c, "select $1::text", "it's \"quoted\" -- not a comment"))
		add(exec(ctx, c, "insert into go_simple values ($1, $2, $3)", k, 1.5, "a'b"))
		b := &pgx.Batch{}
		b.Queue("insert into go_simple values ($1, $2, $3)", k, 2.0, "b")
		b.Queue("insert into go_simple values ($1, $2, $3)", k, 3.0, "c")
		b.Queue("select count(*) from go_simple where device_id = $1", k)
		br := c.SendBatch(ctx, b)
		_, e1 := br.Exec()
		_, e2 := br.Exec()
		var n int
		e3 := br.QueryRow().Scan(&n)
		add(errString(e1), errString(e2), n, errString(e3), "close:"+errString(br.Close()))
		b = &pgx.Batch{}
		b.Queue("insert into go_simple values ($1, $2, $3)", k, 4.0, "d")
		b.Queue("insert into go_simple values ($1, $2, $3)", k, -4.0, "e")
		br = c.SendBatch(ctx, b)
		_, e1 = br.Exec()
		_, e2 = br.Exec()
		add(errString(e1), errString(e2), "close:"+errString(br.Close()))
		tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
		if err != nil {
			return errString(err)
		}
		add(scalar(ctx, tx, "show transaction_isolation"))
		add(exec(ctx, tx, "insert into go_simple values ($1, $2, $3)", k, 5.0, "f"))
		sp, _ := tx.Begin(ctx)
		add(exec(ctx, sp, "insert into go_simple values ($1, $2, $3)", k, -5.0, "g"))
		add("sp_rollback:" + errString(sp.Rollback(ctx)))
		add("commit:" + errString(tx.Commit(ctx)))
		var notes []string
		if err := c.QueryRow(ctx, "select array_agg(note order by value) from go_simple where device_id = $1",
			k).Scan(&notes); err != nil {
			return errString(err)
		}
		add(notes)
		add("tx_status:" + string(c.Conn().PgConn().TxStatus()))
		return steps
	})
	// A default (extended protocol) connection asked for the simple protocol per query.
	c, err := pgx.Connect(ctx, dsn)
	must(err, "connect")
	defer c.Close(context.Background())
	var v int
	var s string
	err = c.QueryRow(ctx, "select $1::int * 3, $2::text", pgx.QuerySimpleProtocol(true), 14, "x").Scan(&v, &s)
	return result{"workers": workers, "per_query": []interface{}{v, s, errString(err)},
		"per_exec": exec(ctx, c, "insert into go_simple values ($1, $2, $3)", pgx.QuerySimpleProtocol(true), 99, 1.0, "z")}
}

// types: values of common types written with parameters and read back, in pgx's binary
// extended protocol and in the simple protocol (text).
func scenarioTypes(dsn string) result {
	ctx, cancel := bounded(30 * time.Second)
	defer cancel()
	out := result{}
	for _, simple := range []bool{false, true} {
		cfg, err := pgx.ParseConfig(dsn)
		must(err, "parse")
		cfg.PreferSimpleProtocol = simple
		c, err := pgx.ConnectConfig(ctx, cfg)
		must(err, "connect")
		name := "go_types_" + strconv.FormatBool(simple)
		setupTable(ctx, c, name, "id int, ts timestamptz, j jsonb, n numeric, b bytea, ai int[], at text[], "+
			"u uuid, f float8, bo bool, d date, iv interval, t text")
		ts := time.Date(2026, 12, 6, 7, 8, 9, 123456000, time.FixedZone("x", 2*3600))
		var num pgtype.Numeric
		must(num.Set("12345678901234567890.000000000123"), "numeric")
		uuid := [16]byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8}
		var j, u interface{} = map[string]interface{}{"fw": "1.2", "n": []int{1, 2}, "ok": true}, uuid
		if simple {
			// pgx cannot write a map or a [16]byte as text: the simple protocol gets strings.
			j, u = `{"fw": "1.2", "n": [1, 2], "ok": true}`, "12345678-9abc-def0-0102-030405060708"
		}
		tag := exec(ctx, c, "insert into "+name+" values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
			1, ts, j, &num, []byte{0, 1, 2, 0xde, 0xad, 0xbe, 0xef}, []int32{3, 1, 2},
			[]string{"a", "b c", `d"e`, ""}, u, 3.25, true, time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC),
			90*time.Minute, "Grüße ✓")
		row := c.QueryRow(ctx, "select ts, j, n, b, ai, at, u, f, bo, d, iv, t from "+name+" where id = $1", 1)
		var (
			gts  time.Time
			gj   map[string]interface{}
			gn   pgtype.Numeric
			gb   []byte
			gai  []int32
			gat  []string
			gu   [16]byte
			gf   float64
			gbo  bool
			gd   time.Time
			giv  pgtype.Interval
			gt   string
			text []interface{}
		)
		err = row.Scan(&gts, &gj, &gn, &gb, &gai, &gat, &gu, &gf, &gbo, &gd, &giv, &gt)
		if err == nil {
			ivText, _ := giv.EncodeText(nil, nil)
			text = []interface{}{normalize(gts), gj, normalize(gn), normalize(gb), gai, gat, normalize(gu),
				gf, gbo, gd.Format("2006-01-02"), string(ivText), gt}
		}
		// Literals of the server's making, and NULLs.
		var lits []interface{}
		rows, err2 := c.Query(ctx, "select '2000-01-01 00:00:00+00'::timestamptz, '[1, {\"a\": null}]'::jsonb, "+
			"'-0.5'::numeric, ''::bytea, array[]::int[], null::text, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, "+
			"'NaN'::float8, 'infinity'::timestamptz")
		if err2 == nil {
			for rows.Next() {
				vals, err := rows.Values()
				if err != nil {
					err2 = err
					break
				}
				for i := range vals {
					vals[i] = normalize(vals[i])
					if f, ok := vals[i].(float64); ok && f != f {
						vals[i] = "NaN"
					}
					if inf, ok := vals[i].(pgtype.InfinityModifier); ok {
						vals[i] = inf.String()
					}
					if ts, ok := vals[i].(pgtype.Timestamptz); ok {
						vals[i] = fmt.Sprintf("%v", ts.InfinityModifier)
					}
				}
				lits = vals
			}
			rows.Close()
			if err2 == nil {
				err2 = rows.Err()
			}
		}
		out[name] = result{"insert": tag, "read": text, "scan_error": errString(err),
			"literals": lits, "literals_error": errString(err2)}
		c.Close(ctx)
	}
	return out
}

// --- with a replica --------------------------------------------------------------------------

// replica: reads with pgx's prepared statements run on the replica, writes and transactions on
// the primary, and a client reads its own writes.
func scenarioReplica(dsn string) result {
	ctx, cancel := bounded(30 * time.Second)
	defer cancel()
	pool := newPool(ctx, dsn, 8, false)
	defer pool.Close()
	conns := acquireN(ctx, pool, 8)
	const w = "select pg_is_in_recovery()"
	workers := parallel(8, func(k int) interface{} {
		c := conns[k]
		defer c.Release()
		out := result{}
		// Before the client writes anything (after a write its reads go to the primary until
		// the replica has replayed it).
		tx, err := c.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
		if err != nil {
			return errString(err)
		}
		out["ro_tx_read"] = scalar(ctx, tx, w)
		out["ro_tx_param"] = scalar(ctx, tx, "select $1::int", k)
		out["ro_commit"] = errString(tx.Commit(ctx))
		tx, err = c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			return errString(err)
		}
		out["ro_rr_read"] = scalar(ctx, tx, w)
		out["ro_rr_commit"] = errString(tx.Commit(ctx))
		out["read"] = scalar(ctx, c, w)
		out["read_param"] = scalar(ctx, c, "select pg_is_in_recovery() and $1::int >= 0", k)
		out["read_simple"] = scalar(ctx, c, w, pgx.QuerySimpleProtocol(true))
		// A hot standby refuses serializable transactions: those go to the primary (after
		// which the client's reads may go to the primary for a while, as after a write).
		tx, err = c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable, AccessMode: pgx.ReadOnly,
			DeferrableMode: pgx.Deferrable})
		if err != nil {
			return errString(err)
		}
		out["ro_serializable_read"] = scalar(ctx, tx, w)
		out["ro_serializable_commit"] = errString(tx.Commit(ctx))
		out["write"] = scalar(ctx, c, "insert into go_rr values ($1, $2) returning pg_is_in_recovery()", k, 1.0)
		// Read-your-writes: right after its write the client reads it (from the primary).
		out["own_write"] = scalar(ctx, c, "select count(*) from go_rr where device_id = $1", k)
		for i := 0; i < 5; i++ {
			exec(ctx, c, "insert into go_rr values ($1, $2)", k, float64(i))
		}
		out["own_writes"] = scalar(ctx, c, "select count(*) from go_rr where device_id = $1", k)
		tx, err = c.Begin(ctx)
		if err != nil {
			return errString(err)
		}
		out["tx_read"] = scalar(ctx, tx, w)
		out["tx_write"] = exec(ctx, tx, "insert into go_rr values ($1, $2)", k, 9.0)
		out["tx_count"] = scalar(ctx, tx, "select count(*) from go_rr where device_id = $1", k)
		out["commit"] = errString(tx.Commit(ctx))
		b := &pgx.Batch{}
		b.Queue("insert into go_rr values ($1, $2)", k, 11.0)
		b.Queue("select count(*) from go_rr where device_id = $1", k)
		br := c.SendBatch(ctx, b)
		_, e1 := br.Exec()
		var n int
		e2 := br.QueryRow().Scan(&n)
		out["batch"] = []interface{}{errString(e1), n, errString(e2), errString(br.Close())}
		// CopyFrom describes `select cols from go_rr` (a read) with the unnamed statement, then
		// sends the COPY (a write) with its data.
		copied, err := c.CopyFrom(ctx, pgx.Identifier{"go_rr"}, []string{"device_id", "value"},
			pgx.CopyFromRows([][]interface{}{{k, 20.0}, {k, 21.0}}))
		out["copy"] = []interface{}{copied, errString(err)}
		out["after_copy"] = scalar(ctx, c, "select count(*) from go_rr where device_id = $1", k)
		return out
	})
	return result{"workers": workers}
}

// --- over two shards by device_id -------------------------------------------------------------

func ints(args []string) []int64 {
	var out []int64
	for _, a := range args {
		v, err := strconv.ParseInt(a, 10, 64)
		must(err, "device id")
		out = append(out, v)
	}
	return out
}

// sharded ARGS: devices of shard 0 (three), then of shard 1 (three).
func scenarioSharded(dsn string, devs []int64) result {
	ctx, cancel := bounded(40 * time.Second)
	defer cancel()
	d0, d1 := devs[:3], devs[3:6]
	pool := newPool(ctx, dsn, 8, false)
	defer pool.Close()
	out := result{}
	conns := acquireN(ctx, pool, 8)
	// Inserts and point reads with device_id as a parameter (pgx sends it in binary, int8).
	out["inserts"] = parallel(8, func(k int) interface{} {
		c := conns[k]
		defer c.Release()
		d := d0[k%2]
		if k >= 4 {
			d = d1[k%2]
		}
		var got []interface{}
		for i := 0; i < 5; i++ {
			got = append(got, exec(ctx, c, "insert into telemetry (device_id, value) values ($1, $2)", d,
				float64(k*10+i)))
		}
		got = append(got, scalar(ctx, c, "select sum(value) from telemetry where device_id = $1 and value >= $2 "+
			"and value < $3", d, float64(k*10), float64(k*10+10)))
		return got
	})
	c, err := pool.Acquire(ctx)
	must(err, "acquire")
	defer c.Release()
	// A read over both shards, gathered.
	out["count_all"] = scalar(ctx, c, "select count(*) from telemetry")
	rows, err := c.Query(ctx, "select device_id, count(*), sum(value) from telemetry group by device_id order by device_id")
	if err != nil {
		out["grouped"] = errString(err)
	} else {
		var g []interface{}
		for rows.Next() {
			vals, _ := rows.Values()
			g = append(g, vals)
		}
		rows.Close()
		g = append(g, errString(rows.Err()))
		out["grouped"] = g
	}
	// Reads over both shards with parameters (the statement pgx prepared is bound on each).
	out["param_count"] = scalar(ctx, c, "select count(*) from telemetry where value >= $1", 5.0)
	out["param_sorted"] = values(ctx, c, "select device_id, value from telemetry where value < $1 "+
		"order by value desc, device_id limit 3", 12.0)
	out["avg"] = scalar(ctx, c, "select avg(value) from telemetry")
	out["min_max"] = values(ctx, c, "select min(value), max(value), count(distinct device_id) from telemetry")
	// Two connections whose reads over both shards (each holding a server of both) time out:
	// pgx closes them and sends CancelRequests, and a read after them does not wait for their
	// servers (pool_size 2 per shard).
	started := time.Now()
	out["cancelled"] = parallel(2, func(k int) interface{} {
		qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer qcancel()
		cc, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return errString(err)
		}
		defer cc.Close(context.Background())
		var n int
		err = cc.QueryRow(qctx, "select count(*) from telemetry where pg_sleep(0.2) is not null").Scan(&n)
		return []interface{}{errString(err), cc.IsClosed()}
	})
	out["after_cancel"] = scalar(ctx, c, "select count(*) from telemetry where value >= $1", 0.0)
	out["after_cancel_fast"] = time.Since(started) < 2500*time.Millisecond
	// A transaction over both shards (two-phase commit), and one rolled back.
	tx, err := c.Begin(ctx)
	must(err, "begin")
	out["tx"] = []interface{}{
		exec(ctx, tx, "insert into archive (device_id, value) values ($1, $2)", d0[2], 1.0),
		exec(ctx, tx, "insert into archive (device_id, value) values ($1, $2)", d1[2], 2.0),
		scalar(ctx, tx, "select count(*) from archive where device_id = $1", d0[2]),
		"commit:" + errString(tx.Commit(ctx)),
	}
	tx, err = c.Begin(ctx)
	must(err, "begin")
	out["tx_rolled_back"] = []interface{}{
		exec(ctx, tx, "insert into archive (device_id, value) values ($1, $2)", d0[2], 3.0),
		exec(ctx, tx, "insert into archive (device_id, value) values ($1, $2)", d1[2], 4.0),
		"rollback:" + errString(tx.Rollback(ctx)),
	}
	out["archive_total"] = scalar(ctx, c, "select count(*) from archive")
	// SendBatch: one Sync for all its statements. Rows of two devices of one shard, then rows
	// of devices on two shards (one implicit transaction on both, committed with two-phase
	// commit).
	batch := func(devices ...int64) interface{} {
		b := &pgx.Batch{}
		for _, d := range devices {
			b.Queue("insert into archive (device_id, value) values ($1, $2)", d, 5.0)
		}
		br := c.SendBatch(ctx, b)
		var got []interface{}
		for range devices {
			_, err := br.Exec()
			got = append(got, errString(err))
			if m := errMessage(err); m != "" {
				got = append(got, strings.HasPrefix(m, "pgvalve:"))
			}
		}
		return append(got, "close:"+errString(br.Close()))
	}
	out["batch_one_shard"] = batch(d0[0], d0[1])
	out["batch_two_shards"] = batch(d0[0], d1[0])
	out["after_batch"] = scalar(ctx, c, "select $1::int8", d1[1])
	out["batch_one_shard_again"] = batch(d1[0], d1[1])
	// In a transaction: the batch's rows are the transaction's on both shards, and none stays
	// after its ROLLBACK.
	tx, err = c.Begin(ctx)
	must(err, "begin")
	bt := []interface{}{exec(ctx, tx, "insert into archive (device_id, value) values ($1, $2)", d0[1], 6.0)}
	b := &pgx.Batch{}
	b.Queue("insert into archive (device_id, value) values ($1, $2)", d0[1], 6.0)
	b.Queue("insert into archive (device_id, value) values ($1, $2)", d1[1], 6.0)
	br := tx.SendBatch(ctx, b)
	_, e1 := br.Exec()
	_, e2 := br.Exec()
	bt = append(bt, errString(e1), errString(e2), errString(br.Close()),
		scalar(ctx, tx, "select count(*) from archive where device_id = $1", d0[1]),
		scalar(ctx, tx, "select count(*) from archive where device_id = $1", d1[1]),
		"rollback:"+errString(tx.Rollback(ctx)))
	out["batch_in_tx_two_shards"] = bt
	// A reference table: written on every shard (two-phase commit), read from any.
	out["reference"] = []interface{}{
		exec(ctx, c, "insert into device_types (id, name) values ($1, $2), ($3, $4)", 1, "thermometer", 2, "hygrometer"),
		exec(ctx, c, "update device_types set name = $1 where id = $2", "barometer", 2),
		values(ctx, c, "select id, name from device_types order by id"),
		values(ctx, c, "select t.device_id, d.name from telemetry t join device_types d on d.id = 1 "+
			"where t.device_id = $1 limit 1", d1[0]),
	}
	return out
}

// readQueries are reads of go_readings (device_id bigint, ts timestamptz, value float8,
// reading numeric(10,3), tag text, id uuid, ok bool, day date) that a sharded pgvalve combines
// from both shards; their answers are compared with one server holding the same rows.
var readQueries = []struct {
	sql  string
	args []interface{}
}{
	{"select device_id, ts, value from go_readings where ts >= $1 order by ts desc, device_id limit $2",
		[]interface{}{time.Date(2026, 1, 1, 5, 0, 0, 0, time.UTC), 7}},
	{"select device_id, reading, ts from go_readings order by reading, device_id, ts limit 10", nil},
	{"select device_id, reading, ts from go_readings order by reading desc nulls last, ts offset $1 limit 4",
		[]interface{}{3}},
	{"select count(*), sum(reading), avg(reading), avg(value), sum(value), min(ts), max(ts), min(reading), " +
		"max(day), avg(device_id) from go_readings", nil},
	{"select count(*), sum(reading), max(ts) from go_readings where value > $1", []interface{}{2.0}},
	{"select tag, count(*), sum(reading), min(ts) from go_readings group by tag order by tag", nil},
	{"select day, count(*), sum(value) from go_readings group by day order by day desc", nil},
	{"select id, device_id from go_readings order by id limit 5", nil},
	{"select distinct tag from go_readings order by tag", nil},
	{"select device_id, string_agg(tag, ',' order by ts), max(reading) from go_readings group by device_id " +
		"having max(reading) > $1 order by 3 desc, 1", []interface{}{0.5}},
	{"select bool_and(ok), bool_or(ok), count(*) filter (where ok), count(distinct device_id) from go_readings", nil},
	{"select ts, reading, id, ok from go_readings where device_id = $1 order by ts", []interface{}{int64(0)}},
	{"select count(*) from go_readings where device_id = any($1)", []interface{}{[]int64{0, 1, 2}}},
	{"select ts, device_id from go_readings where tag = $1 order by ts, device_id limit 3", []interface{}{"b"}},
	{"select ts, ts::text as ts_text, day::text, reading::text, id from go_readings order by ts desc, id limit 4", nil},
	{"select device_id, 10 / (device_id - $1) from go_readings order by 1", []interface{}{int64(0)}},
	{"select count(*) from go_readings where ts < $1", []interface{}{time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC)}},
}

// reads ARGS: the device of the point read. Each query in pgx's binary extended protocol and
// in the simple protocol (text).
func scenarioReads(dsn string, devs []int64) result {
	ctx, cancel := bounded(30 * time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	must(err, "connect")
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, "set timezone = 'America/New_York'")
	must(err, "set timezone")
	var binary, text []interface{}
	for _, q := range readQueries {
		args := q.args
		if len(args) > 0 {
			if _, ok := args[0].(int64); ok {
				args = []interface{}{devs[0]}
			}
		}
		binary = append(binary, values(ctx, c, q.sql, args...))
		text = append(text, values(ctx, c, q.sql, append([]interface{}{pgx.QuerySimpleProtocol(true)}, args...)...))
	}
	return result{"binary": binary, "text": text}
}

// sharded_copy ARGS: like sharded. CopyFrom (binary COPY) into the sharded table.
func scenarioShardedCopy(dsn string, devs []int64) result {
	ctx, cancel := bounded(30 * time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	must(err, "connect")
	defer c.Close(context.Background())
	var rows [][]interface{}
	for i, d := range devs {
		for j := 0; j <= i; j++ {
			rows = append(rows, []interface{}{d, float64(j)})
		}
	}
	out := result{}
	n, err := c.CopyFrom(ctx, pgx.Identifier{"telemetry"}, []string{"device_id", "value"}, pgx.CopyFromRows(rows))
	if err != nil {
		out["copy"] = errString(err)
		out["message"] = errMessage(err)
	} else {
		out["copy"] = n
	}
	out["after"] = scalar(ctx, c, "select count(*) from telemetry")
	return out
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: pgxaudit SCENARIO DSN [ARGS...]")
		os.Exit(2)
	}
	dsn := os.Args[2]
	var out result
	switch os.Args[1] {
	case "pool":
		out = scenarioPool(dsn)
	case "batch":
		out = scenarioBatch(dsn)
	case "invalidate":
		out = scenarioInvalidate(dsn)
	case "tx":
		out = scenarioTx(dsn)
	case "cancel":
		out = scenarioCancel(dsn)
	case "listen":
		out = scenarioListen(dsn)
	case "queue":
		out = scenarioQueue(dsn)
	case "session":
		out = scenarioSession(dsn)
	case "copy":
		out = scenarioCopy(dsn)
	case "simple":
		out = scenarioSimple(dsn)
	case "types":
		out = scenarioTypes(dsn)
	case "replica":
		out = scenarioReplica(dsn)
	case "sharded":
		out = scenarioSharded(dsn, ints(os.Args[3:]))
	case "reads":
		out = scenarioReads(dsn, ints(os.Args[3:]))
	case "sharded_copy":
		out = scenarioShardedCopy(dsn, ints(os.Args[3:]))
	default:
		fmt.Fprintln(os.Stderr, "unknown scenario", os.Args[1])
		os.Exit(2)
	}
	b, err := json.Marshal(out)
	must(err, "json")
	fmt.Println(string(b))
}
