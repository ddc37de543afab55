// PgJDBC server-side prepared statements through pgvalve in transaction mode.
// THREADS connections (prepareThreshold=1: every PreparedStatement is a named server-side
// statement from its first execution; every connection names them S_1, S_2, ...) run their
// statements many times in autocommit and in explicit transactions; every result is checked.
// Usage: java -cp .:postgresql.jar JdbcPrepared URL USER PASSWORD THREADS ITERATIONS
// Prints "OK ..." and exits 0 when every check passed; exits 1 otherwise.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;

import org.postgresql.PGStatement;

public class JdbcPrepared {
  static void check(boolean cond, String what) {
    if (!cond) throw new IllegalStateException("check failed: " + what);
  }

  static void run(String url, String user, String password, int k, int iterations,
                  Set<Integer> pids) throws SQLException {
    Properties props = new Properties();
    props.setProperty("user", user);
    props.setProperty("password", password);
    props.setProperty("prepareThreshold", "1");
    props.setProperty("connectTimeout", "10");
    props.setProperty("socketTimeout", "60");
    try (Connection c = DriverManager.getConnection(url, props)) {
      // a different text per thread; the driver names it S_1 in every connection
      try (PreparedStatement calc = c.prepareStatement(
               "select ?::int * 2 + " + k + ", ?::text || '-t" + k + "'");
           PreparedStatement shared = c.prepareStatement("select ?::bigint * ?::bigint");
           PreparedStatement ins = c.prepareStatement(
               "insert into jdbc_results(thread, i) values (?, ?)");
           PreparedStatement cnt = c.prepareStatement(
               "select count(*) from jdbc_results where thread = ?");
           PreparedStatement pid = c.prepareStatement("select pg_backend_pid()")) {
        // autocommit
        for (int i = 0; i < iterations; i++) {
          calc.setInt(1, i);
          calc.setString(2, "v" + i);
          try (ResultSet rs = calc.executeQuery()) {
            check(rs.next(), "calc row");
            check(rs.getInt(1) == i * 2 + k, "calc int " + rs.getInt(1) + " thread " + k);
            check(rs.getString(2).equals("v" + i + "-t" + k), "calc text " + rs.getString(2));
            check(!rs.next(), "calc one row");
          }
          shared.setLong(1, i);
          shared.setLong(2, k + 1);
          try (ResultSet rs = shared.executeQuery()) {
            check(rs.next() && rs.getLong(1) == (long) i * (k + 1), "shared thread " + k);
          }
        }
        check(calc.unwrap(PGStatement.class).isUseServerPrepare(), "server-side prepare");
        // explicit transactions
        c.setAutoCommit(false);
        int rows = 0;
        for (int t = 0; t < iterations / 10; t++) {
          int txPid;
          try (ResultSet rs = pid.executeQuery()) {
            rs.next();
            txPid = rs.getInt(1);
          }
          synchronized (pids) {
            pids.add(txPid);
          }
          for (int j = 0; j < 3; j++) {
            ins.setInt(1, k);
            ins.setInt(2, t * 10 + j);
            check(ins.executeUpdate() == 1, "insert");
          }
          calc.setInt(1, t);
          calc.setString(2, "tx");
          try (ResultSet rs = calc.executeQuery()) {
            check(rs.next() && rs.getInt(1) == t * 2 + k, "calc in tx");
          }
          try (ResultSet rs = pid.executeQuery()) {
            rs.next();
            check(rs.getInt(1) == txPid, "server changed inside a transaction");
          }
          if (t % 5 == 4) {
            c.rollback();
          } else {
            c.commit();
            rows += 3;
          }
          cnt.setInt(1, k);
          try (ResultSet rs = cnt.executeQuery()) {
            check(rs.next() && rs.getLong(1) == rows, "count " + rs.getLong(1) + " != " + rows);
          }
          c.commit();
        }
        // a failing execution inside a transaction, then the statements still work
        c.setAutoCommit(true);
        try (PreparedStatement div = c.prepareStatement("select 1 / ?::int")) {
          div.setInt(1, 0);
          boolean failed = false;
          try (ResultSet rs = div.executeQuery()) {
            rs.next();
          } catch (SQLException e) {
            failed = "22012".equals(e.getSQLState());
          }
          check(failed, "division by zero reported as 22012");
          div.setInt(1, 1);
          try (ResultSet rs = div.executeQuery()) {
            check(rs.next() && rs.getInt(1) == 1, "div after error");
          }
        }
        calc.setInt(1, 7);
        calc.setString(2, "end");
        try (ResultSet rs = calc.executeQuery()) {
          check(rs.next() && rs.getInt(1) == 14 + k, "calc at end");
        }
      }
    }
  }

  public static void main(String[] args) throws Exception {
    String url = args[0], user = args[1], password = args[2];
    int threads = Integer.parseInt(args[3]);
    int iterations = Integer.parseInt(args[4]);
    Set<Integer> pids = new TreeSet<>();
    List<Throwable> failures = Collections.synchronizedList(new ArrayList<>());
    List<Thread> workers = new ArrayList<>();
    for (int k = 0; k < threads; k++) {
      final int kk = k;
      Thread t = new Thread(() -> {
        try {
          run(url, user, password, kk, iterations, pids);
        } catch (Throwable e) {
          failures.add(e);
        }
      });
      workers.add(t);
      t.start();
    }
    for (Thread t : workers) t.join(120_000);
    for (Thread t : workers) {
      if (t.isAlive()) failures.add(new IllegalStateException("thread still running"));
    }
    if (!failures.isEmpty()) {
      for (Throwable e : failures) e.printStackTrace();
      System.out.println("FAILED " + failures.size() + " of " + threads + " threads");
      System.exit(1);
    }
    System.out.println("OK threads=" + threads + " iterations=" + iterations + " server_pids=" + pids);
    System.exit(0);
  }
}
