// pqaudit runs one scenario of lib/pq (github.com/lib/pq) with database/sql against a DSN and
// prints what it saw as one JSON object on stdout (see ../pgxaudit for the conventions).
//
//	pqaudit SCENARIO DSN [ARGS...]
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"
)

type result map[string]interface{}

func errString(err error) string {
	if err == nil {
		return ""
	}
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return "pg:" + string(pqErr.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return err.Error()
}

func must(err error, what string) {
	if err != nil {
		out, _ := json.Marshal(result{"fatal": errString(err), "detail": what + ": " + err.Error()})
		fmt.Println(string(out))
		os.Exit(0)
	}
}

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

type execer interface {
	ExecContext(context.Context, string, ...interface{}) (sql.Result, error)
	QueryRowContext(context.Context, string, ...interface{}) *sql.Row
}

func exec(ctx context.Context, c execer, q string, args ...interface{}) interface{} {
	r, err := c.ExecContext(ctx, q, args...)
	if err != nil {
		return errString(err)
	}
	n, err := r.RowsAffected()
	if err != nil {
		return errString(err)
	}
	return n
}

func scalar(ctx context.Context, c execer, q string, args ...interface{}) interface{} {
	var v interface{}
	if err := c.QueryRowContext(ctx, q, args...).Scan(&v); err != nil {
		return errString(err)
	}
	switch x := v.(type) {
	case []byte:
		return string(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	}
	return v
}

func open(dsn string, n int) *sql.DB {
	db, err := sql.Open("postgres", dsn)
	must(err, "open")
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	return db
}

// conns checks out n distinct connections (each a client connection of its own).
func conns(ctx context.Context, db *sql.DB, n int) []*sql.Conn {
	out := make([]*sql.Conn, n)
	for i := range out {
		c, err := db.Conn(ctx)
		must(err, "conn")
		out[i] = c
	}
	return out
}

// withTable opens a scenario: a bounded context, a database/sql pool of n connections and its
// table made anew; done closes the pool and the context.
func withTable(dsn string, limit time.Duration, n int, table, ddl string) (context.Context, *sql.DB, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	db := open(dsn, n)
	setupTable(ctx, db, table, ddl)
	return ctx, db, func() {
		db.Close()
		cancel()
	}
}

func setupTable(ctx context.Context, db *sql.DB, name, ddl string) {
	_, err := db.ExecContext(ctx, "drop table if exists "+name)
	must(err, "drop")
	_, err = db.ExecContext(ctx, fmt.Sprintf("create table %s (%s)", name, ddl))
	must(err, "create")
}

// queries: parameters through the unnamed statement (Parse/Describe/Sync, then Bind/Execute/
// Sync), errors and the connection after them, on 8 connections at once.
func scenarioQueries(dsn string) result {
	ctx, db, done := withTable(dsn, 40*time.Second, 8, "pq_q", "device_id int, ts timestamptz, value float8 check (value >= 0), note text")
	defer done()
	cs := conns(ctx, db, 8)
	workers := parallel(8, func(k int) interface{} {
		c := cs[k]
		defer c.Close()
		var steps []interface{}
		sum := int64(0)
		for i := 0; i < 20; i++ {
			var a int64
			var b string
			if err := c.QueryRowContext(ctx, "select $1::int8 * 2, $2::text || '!'", int64(i), fmt.Sprint(k)).
				Scan(&a, &b); err != nil {
				return errString(err)
			}
			sum += a
			if _, err := c.ExecContext(ctx, "insert into pq_q values ($1, $2, $3, $4)", k,
				time.Date(2026, 5, 1, 0, 0, i, 0, time.UTC), float64(i), b); err != nil {
				return errString(err)
			}
		}
		steps = append(steps, sum)
		rows, err := c.QueryContext(ctx, "select value from pq_q where device_id = $1 and value < $2 order by value", k, 3)
		if err != nil {
			return errString(err)
		}
		var vs []float64
		for rows.Next() {
			var v float64
			rows.Scan(&v)
			vs = append(vs, v)
		}
		rows.Close()
		steps = append(steps, vs, errString(rows.Err()))
		steps = append(steps, exec(ctx, c, "insert into pq_q values ($1, now(), $2, 'x')", k, -1.0))
		steps = append(steps, scalar(ctx, c, "select $1::int / $2::int", 1, 0))
		steps = append(steps, scalar(ctx, c, "select count(*) from pq_q where device_id = $1", k))
		steps = append(steps, scalar(ctx, c, "select min(ts) from pq_q where device_id = $1", k))
		return steps
	})
	return result{"workers": workers}
}

// prepare: db.Prepare (lib/pq names its statements "1", "2", ... on each connection) used by
// 16 goroutines over 8 connections.
func scenarioPrepare(dsn string) result {
	ctx, db, done := withTable(dsn, 40*time.Second, 8, "pq_p", "device_id int, value float8")
	defer done()
	// Open 8 connections first, so that the statements are prepared on all of them.
	cs := conns(ctx, db, 8)
	for _, c := range cs {
		c.Close()
	}
	ins, err := db.PrepareContext(ctx, "insert into pq_p values ($1, $2)")
	must(err, "prepare insert")
	sel, err := db.PrepareContext(ctx, "select count(*), coalesce(sum(value), 0) from pq_p where device_id = $1")
	must(err, "prepare select")
	mul, err := db.PrepareContext(ctx, "select $1::int * $2::int")
	must(err, "prepare mul")
	workers := parallel(16, func(k int) interface{} {
		total := 0
		for i := 0; i < 25; i++ {
			if _, err := ins.ExecContext(ctx, k, float64(i)); err != nil {
				return errString(err)
			}
			var v int
			if err := mul.QueryRowContext(ctx, k, i).Scan(&v); err != nil {
				return errString(err)
			}
			total += v
		}
		var n int
		var s float64
		if err := sel.QueryRowContext(ctx, k).Scan(&n, &s); err != nil {
			return errString(err)
		}
		return []interface{}{total, n, s}
	})
	// A statement prepared in a transaction, used there and after it.
	tx, err := db.BeginTx(ctx, nil)
	must(err, "begin")
	st, err := tx.PrepareContext(ctx, "select count(*) from pq_p where device_id < $1")
	must(err, "prepare in tx")
	var inTx int
	must(st.QueryRowContext(ctx, 8).Scan(&inTx), "in tx")
	must(tx.Commit(), "commit")
	stats := db.Stats()
	return result{"workers": workers, "in_tx": inTx, "open_connections": stats.OpenConnections,
		"close": errString(ins.Close())}
}

// tx: BeginTx with isolation and read-only, rollback, errors mid-transaction.
func scenarioTx(dsn string) result {
	ctx, db, done := withTable(dsn, 40*time.Second, 8, "pq_tx", "worker int, v int check (v >= 0)")
	defer done()
	cs := conns(ctx, db, 8)
	workers := parallel(8, func(k int) interface{} {
		c := cs[k]
		defer c.Close()
		var steps []interface{}
		add := func(v ...interface{}) { steps = append(steps, v...) }
		tx, err := c.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
		if err != nil {
			return errString(err)
		}
		add(scalar(ctx, tx, "show transaction_isolation"), scalar(ctx, tx, "show transaction_read_only"))
		add(exec(ctx, tx, "insert into pq_tx values ($1, 1)", k))
		add("rollback:" + errString(tx.Rollback()))
		tx, _ = c.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
		add(scalar(ctx, tx, "show transaction_isolation"))
		add(exec(ctx, tx, "insert into pq_tx values ($1, $2)", k, 1))
		add(exec(ctx, tx, "savepoint a"))
		add(exec(ctx, tx, "insert into pq_tx values ($1, $2)", k, -1))
		add(exec(ctx, tx, "rollback to savepoint a"))
		add(exec(ctx, tx, "insert into pq_tx values ($1, $2)", k, 2))
		add("commit:" + errString(tx.Commit()))
		tx, _ = c.BeginTx(ctx, nil)
		add(exec(ctx, tx, "insert into pq_tx values ($1, $2)", k, 3))
		add("rollback:" + errString(tx.Rollback()))
		tx, _ = c.BeginTx(ctx, nil)
		add(exec(ctx, tx, "insert into pq_tx values ($1, $2)", k, 4))
		add(scalar(ctx, tx, "select 1/0"))
		add(scalar(ctx, tx, "select $1::int", k))
		add("commit:" + errString(tx.Commit()))
		add(scalar(ctx, c, "show transaction_isolation"))
		var vs pq.Int64Array
		if err := c.QueryRowContext(ctx, "select coalesce(array_agg(v order by v), '{}') from pq_tx where worker = $1",
			k).Scan(&vs); err != nil {
			return errString(err)
		}
		add([]int64(vs))
		return steps
	})
	return result{"workers": workers}
}

// copyin: pq.CopyIn (text COPY FROM STDIN) in transactions, 4 at once, and a row that fails.
func scenarioCopyIn(dsn string) result {
	ctx, db, done := withTable(dsn, 40*time.Second, 8, "pq_copy", "device_id int not null, ts timestamptz, value float8, note text")
	defer done()
	copyRows := func(dev int, n int, nullAt int, commit bool) interface{} {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return errString(err)
		}
		st, err := tx.PrepareContext(ctx, pq.CopyIn("pq_copy", "device_id", "ts", "value", "note"))
		if err != nil {
			tx.Rollback()
			return "prepare:" + errString(err)
		}
		for i := 0; i < n; i++ {
			var d interface{} = dev
			if i == nullAt {
				d = nil
			}
			if _, err := st.ExecContext(ctx, d, time.Date(2026, 6, 1, 0, 0, i%60, 0, time.UTC), float64(i)/2,
				fmt.Sprintf("tab\there, quote ' and \\ backslash %d", i)); err != nil {
				tx.Rollback()
				return "row:" + errString(err)
			}
		}
		_, err = st.ExecContext(ctx)
		if err != nil {
			st.Close()
			tx.Rollback()
			return "end:" + errString(err)
		}
		st.Close()
		if commit {
			return "commit:" + errString(tx.Commit())
		}
		return "rollback:" + errString(tx.Rollback())
	}
	out := result{}
	out["first"] = copyRows(1, 1000, -1, true)
	out["rolled_back"] = copyRows(2, 10, -1, false)
	out["failing"] = copyRows(3, 300, 150, true)
	out["parallel"] = parallel(4, func(k int) interface{} { return copyRows(10+k, 250, -1, true) })
	rows, err := db.QueryContext(ctx, "select device_id, count(*), sum(value), max(note) from pq_copy group by 1 order by 1")
	must(err, "summary")
	var sum []interface{}
	for rows.Next() {
		var d, n int
		var s float64
		var note string
		rows.Scan(&d, &n, &s, &note)
		sum = append(sum, []interface{}{d, n, s, note})
	}
	rows.Close()
	out["summary"] = sum
	out["usable"] = scalar(ctx, db, "select $1::int", 5)
	return out
}

// listener: pq.Listener (a connection of its own running LISTEN and reading notifications),
// NOTIFY from the pool, Unlisten, Ping.
func scenarioListener(dsn string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	db := open(dsn, 4)
	defer db.Close()
	events := make(chan string, 16)
	l := pq.NewListener(dsn, 100*time.Millisecond, time.Second, func(ev pq.ListenerEventType, err error) {
		events <- fmt.Sprintf("%d:%s", ev, errString(err))
	})
	defer l.Close()
	out := result{}
	out["listen"] = errString(l.Listen("ingest"))
	out["listen2"] = errString(l.Listen("Ingest.Other"))
	out["notify"] = parallel(3, func(k int) interface{} {
		return exec(ctx, db, "select pg_notify('ingest', $1)", fmt.Sprintf("p%d", k))
	})
	out["notify_plain"] = exec(ctx, db, `notify "Ingest.Other", 'plain'`)
	heard := func(n int) []string {
		var got []string
		for len(got) < n {
			select {
			case ev := <-l.Notify:
				if ev == nil {
					got = append(got, "reconnected")
				} else {
					got = append(got, ev.Channel+"/"+ev.Extra)
				}
			case <-time.After(5 * time.Second):
				return append(got, "timeout")
			}
		}
		sort.Strings(got)
		return got
	}
	out["heard"] = heard(4)
	out["ping"] = errString(l.Ping())
	out["unlisten"] = errString(l.Unlisten("ingest"))
	out["notify_unheard"] = exec(ctx, db, "notify ingest, 'unheard'")
	out["notify_other"] = exec(ctx, db, `notify "Ingest.Other", 'still'`)
	out["heard_after"] = heard(1)
	select {
	case ev := <-l.Notify:
		out["extra"] = fmt.Sprint(ev)
	case <-time.After(500 * time.Millisecond):
		out["extra"] = nil
	}
	var evs []string
	for done := false; !done; {
		select {
		case e := <-events:
			evs = append(evs, e)
		default:
			done = true
		}
	}
	out["events"] = evs
	return out
}

// big: a multi-row INSERT of 60000 parameters and an 8 MiB parameter value, through the
// unnamed statement, on 8 connections at once; with long, statements whose text is over 1 MiB
// (a literal of 1.5 MiB) and has a parameter, three times on each connection.
func scenarioBig(dsn string, long bool) result {
	ctx, db, done := withTable(dsn, 40*time.Second, 8, "pq_big", "device_id int, payload text")
	defer done()
	literal := strings.Repeat("0123456789abcdef", 96*1024) // 1.5 MiB
	var sb strings.Builder
	var args []interface{}
	sb.WriteString("insert into pq_big values ")
	for i := 0; i < 30000; i++ {
		if i > 0 {
			sb.WriteString(", ")
		}
		fmt.Fprintf(&sb, "($%d, $%d)", 2*i+1, 2*i+2)
		args = append(args, 1000+i%7, "r")
	}
	multi := sb.String()
	cs := conns(ctx, db, 8)
	workers := parallel(8, func(k int) interface{} {
		c := cs[k]
		defer c.Close()
		var steps []interface{}
		for i := 0; long && i < 3; i++ {
			steps = append(steps, exec(ctx, c, "insert into pq_big values ($1, '"+literal+"')", k),
				scalar(ctx, c, "select length($1::text || '"+literal+"')", "x"))
		}
		if long {
			return steps
		}
		if k < 2 {
			steps = append(steps, exec(ctx, c, multi, args...))
		}
		steps = append(steps, exec(ctx, c, "insert into pq_big values ($1, $2)", 100+k, strings.Repeat("z", 8<<20)),
			scalar(ctx, c, "select md5(payload) = md5(repeat('z', 8 * 1024 * 1024)) from pq_big where device_id = $1", 100+k))
		return steps
	})
	return result{"workers": workers, "count": scalar(ctx, db, "select count(*) from pq_big")}
}

// sharded ARGS: three devices of shard 0, three of shard 1. Inserts and point reads with
// device_id parameters (text, through the unnamed statement), a read over both shards, a
// transaction over both, and pq.CopyIn (text COPY, routed row by row) into telemetry.
func scenarioSharded(dsn string, devs []int64) result {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	db := open(dsn, 8)
	defer db.Close()
	out := result{}
	out["inserts"] = parallel(6, func(k int) interface{} {
		var got []interface{}
		for i := 0; i < 4; i++ {
			got = append(got, exec(ctx, db, "insert into telemetry (device_id, value) values ($1, $2)", devs[k], float64(k*10+i)))
		}
		return append(got, scalar(ctx, db, "select sum(value) from telemetry where device_id = $1", devs[k]))
	})
	out["count_all"] = scalar(ctx, db, "select count(*) from telemetry where value >= $1", 0.0)
	tx, err := db.BeginTx(ctx, nil)
	must(err, "begin")
	out["tx"] = []interface{}{
		exec(ctx, tx, "insert into archive (device_id, value) values ($1, $2)", devs[0], 1.0),
		exec(ctx, tx, "insert into archive (device_id, value) values ($1, $2)", devs[3], 2.0),
		"commit:" + errString(tx.Commit()),
	}
	tx, err = db.BeginTx(ctx, nil)
	must(err, "begin")
	st, err := tx.PrepareContext(ctx, pq.CopyIn("archive", "device_id", "value"))
	must(err, "copy in")
	var copied []interface{}
	for i, d := range devs {
		for j := 0; j <= i; j++ {
			_, err := st.ExecContext(ctx, d, float64(100+j))
			copied = append(copied, errString(err))
		}
	}
	_, err = st.ExecContext(ctx)
	copied = append(copied, errString(err), errString(st.Close()), "commit:"+errString(tx.Commit()))
	out["copy"] = copied
	out["archive"] = scalar(ctx, db, "select count(*) from archive where value >= $1", 0.0)
	return out
}

// invalidate: a statement each of 8 connections prepared (c.Prepare), then ALTER TABLE ...
// DROP COLUMN changes what it returns. PostgreSQL refuses each later Bind of such a statement
// with 0A000 "cached plan must not change result type" (lib/pq does not prepare it again).
func scenarioInvalidate(dsn string) result {
	ctx, db, done := withTable(dsn, 40*time.Second, 9, "pq_inv", "a int, b int, c int")
	defer done()
	_, err := db.ExecContext(ctx, "insert into pq_inv values (1, 2, 3)")
	must(err, "insert")
	cs := conns(ctx, db, 8)
	stmts := make([]*sql.Stmt, 8)
	use := func(k int) interface{} {
		rows, err := stmts[k].QueryContext(ctx, 1)
		if err != nil {
			return errString(err)
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		var got []interface{}
		for rows.Next() {
			vals := make([]interface{}, len(cols))
			ptrs := make([]interface{}, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				return errString(err)
			}
			got = append(got, vals)
		}
		if rows.Err() != nil {
			return errString(rows.Err())
		}
		return []interface{}{cols, got}
	}
	out := result{}
	var before []interface{}
	for k, c := range cs {
		st, err := c.PrepareContext(ctx, "select * from pq_inv where a = $1")
		must(err, "prepare")
		stmts[k] = st
		before = append(before, use(k))
	}
	out["before"] = before
	out["alter"] = exec(ctx, db, "alter table pq_inv drop column b")
	var after []interface{}
	for k := range cs {
		after = append(after, []interface{}{use(k), use(k)})
	}
	out["after"] = after
	for k, c := range cs {
		stmts[k].Close()
		c.Close()
	}
	return out
}

// cancel: lib/pq answers a context that expires during a query with a CancelRequest and keeps
// the connection (57014 from the server); the other connections' queries are not cancelled.
func scenarioCancel(dsn string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	db := open(dsn, 8)
	defer db.Close()
	cs := conns(ctx, db, 8)
	started := time.Now()
	workers := parallel(8, func(k int) interface{} {
		c := cs[k]
		if k < 3 {
			// The query gets the server's 57014; lib/pq then closes that connection, and the
			// pool's next one goes on.
			qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			t0 := time.Now()
			var v interface{}
			err := c.QueryRowContext(qctx, "select pg_sleep(5)").Scan(&v)
			qcancel()
			steps := []interface{}{errString(err), time.Since(t0) < 2*time.Second,
				errString(c.PingContext(ctx))}
			c.Close()
			return append(steps, scalar(ctx, db, "select $1::int", k))
		}
		defer c.Close()
		total := 0
		for i := 0; i < 8; i++ {
			var v int
			if err := c.QueryRowContext(ctx, "select $1::int from pg_sleep(0.05)", i).Scan(&v); err != nil {
				return errString(err)
			}
			total += v
		}
		return total
	})
	elapsed := time.Since(started)
	return result{"workers": workers, "within_3s": elapsed < 3*time.Second,
		"still_sleeping": scalar(ctx, db, "select count(*) from pg_stat_activity where query = 'select pg_sleep(5)' "+
			"and state = 'active'")}
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: pqaudit SCENARIO DSN [ARGS...]")
		os.Exit(2)
	}
	dsn := os.Args[2]
	var out result
	switch os.Args[1] {
	case "queries":
		out = scenarioQueries(dsn)
	case "prepare":
		out = scenarioPrepare(dsn)
	case "tx":
		out = scenarioTx(dsn)
	case "copyin":
		out = scenarioCopyIn(dsn)
	case "cancel":
		out = scenarioCancel(dsn)
	case "invalidate":
		out = scenarioInvalidate(dsn)
	case "sharded":
		var devs []int64
		for _, a := range os.Args[3:] {
			var d int64
			fmt.Sscan(a, &d)
			devs = append(devs, d)
		}
		out = scenarioSharded(dsn, devs)
	case "big":
		out = scenarioBig(dsn, false)
	case "long":
		out = scenarioBig(dsn, true)
	case "listener":
		out = scenarioListener(dsn)
	default:
		fmt.Fprintln(os.Stderr, "unknown scenario", os.Args[1])
		os.Exit(2)
	}
	b, err := json.Marshal(out)
	must(err, "json")
	fmt.Println(string(b))
}
