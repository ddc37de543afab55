// PgJDBC with a fetch size against a sharded database through pgvalve: with autocommit off,
// PgJDBC binds a named portal and executes it FETCH rows at a time, one request each. Reads over
// several shards must give every row, in order when asked, whatever the fetch size.
// Usage: java -cp .:postgresql.jar JdbcShardedFetch URL USER PASSWORD ROWS FETCH
// (the table telemetry holds device_id 1..ROWS). Prints "OK" and exits 0 when every check
// passed; exits 1 otherwise.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Properties;

public class JdbcShardedFetch {
  static void check(boolean cond, String what) {
    if (!cond) throw new IllegalStateException("check failed: " + what);
  }

  static List<Long> ids(ResultSet r) throws SQLException {
    List<Long> out = new ArrayList<>();
    while (r.next()) out.add(r.getLong(1));
    return out;
  }

  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    props.setProperty("user", args[1]);
    props.setProperty("password", args[2]);
    final long rows = Long.parseLong(args[3]);
    final int fetch = Integer.parseInt(args[4]);
    List<Long> all = new ArrayList<>();
    for (long d = 1; d <= rows; ++d) all.add(d);
    try (Connection c = DriverManager.getConnection(args[0], props)) {
      c.setAutoCommit(false);
      // A PreparedStatement turns into a named server-side statement from its fifth execution
      // (binary results): each runs its portal in parts.
      try (PreparedStatement ordered = c.prepareStatement(
               "SELECT device_id FROM telemetry WHERE device_id > ? ORDER BY device_id DESC")) {
        ordered.setFetchSize(fetch);
        for (int i = 0; i < 6; ++i) {
          ordered.setLong(1, 0);
          try (ResultSet r = ordered.executeQuery()) {
            List<Long> want = new ArrayList<>(all);
            Collections.reverse(want);
            check(ids(r).equals(want), "ordered rows in execution " + i);
          }
          c.commit();
        }
      }
      try (Statement st = c.createStatement()) {
        st.setFetchSize(fetch);
        try (ResultSet r = st.executeQuery("SELECT device_id FROM telemetry")) {
          List<Long> got = ids(r);
          Collections.sort(got);
          check(got.equals(all), "concatenated rows: " + got.size());
        }
        try (ResultSet r = st.executeQuery(
                 "SELECT device_id % 3, count(*) FROM telemetry GROUP BY 1 ORDER BY 1")) {
          long total = 0;
          int groups = 0;
          while (r.next()) {
            check(r.getLong(1) == groups, "group " + groups);
            total += r.getLong(2);
            ++groups;
          }
          check(groups == 3 && total == rows, "combined groups " + groups + " " + total);
        }
        c.commit();
        // A result set closed before its end: the portal ends, and the transaction goes on.
        try (ResultSet r = st.executeQuery("SELECT device_id FROM telemetry ORDER BY device_id")) {
          check(r.next() && r.getLong(1) == 1, "the first row");
        }
        try (ResultSet r = st.executeQuery("SELECT count(*) FROM telemetry")) {
          check(r.next() && r.getLong(1) == rows, "a statement after the closed portal");
        }
        c.commit();
        // Another statement while a result set is open closes its portal (pgvalve keeps it only
        // while it is fetched): its next fetch fails with 34000, saying so.
        try (ResultSet r = st.executeQuery("SELECT device_id FROM telemetry ORDER BY device_id");
             Statement other = c.createStatement()) {
          check(r.next(), "a row before the other statement");
          try (ResultSet o = other.executeQuery("SELECT 1")) {
            check(o.next(), "the other statement runs");
          }
          String state = null;
          String message = "";
          try {
            while (r.next()) {
            }
          } catch (SQLException e) {
            state = e.getSQLState();
            message = e.getMessage();
          }
          check(rows <= fetch || "34000".equals(state), "the closed portal's next fetch: " + state);
          check(rows <= fetch || message.contains("pgvalve: portal"), message);
        }
        c.rollback();
      }
    }
    System.out.println("OK");
  }
}
