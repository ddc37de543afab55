// PgJDBC session settings and LISTEN through pgvalve in transaction mode (pool_size 2).
// Connection A sets work_mem with Statement.execute and statement_timeout with a
// PreparedStatement executed several times (named server-side statement from the
// prepareThreshold-th execution), then runs its queries while two holder connections keep the
// other server busy, so that A lands on both servers in turn; A must see its settings on each,
// a plain connection must see the defaults. Then LISTEN through Statement.execute (unnamed
// statement) and through a PreparedStatement; NOTIFY from another connection must arrive.
// Usage: java -cp .:postgresql.jar JdbcSessionState URL USER PASSWORD THRESHOLD|default
//        DEFAULT_WORK_MEM ROUNDS
// Prints "OK ..." and exits 0 when every check passed; exits 1 otherwise.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;

public class JdbcSessionState {
  static void check(boolean cond, String what) {
    if (!cond) throw new IllegalStateException("check failed: " + what);
  }

  static Connection connect(String url, String user, String password, String threshold)
      throws SQLException {
    Properties props = new Properties();
    props.setProperty("user", user);
    props.setProperty("password", password);
    if (!threshold.equals("default")) props.setProperty("prepareThreshold", threshold);
    props.setProperty("connectTimeout", "10");
    props.setProperty("socketTimeout", "60");
    return DriverManager.getConnection(url, props);
  }

  static String scalar(PreparedStatement ps) throws SQLException {
    try (ResultSet rs = ps.executeQuery()) {
      check(rs.next(), "a row");
      return rs.getString(1);
    }
  }

  static String scalar(Connection c, String sql) throws SQLException {
    try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
      check(rs.next(), "a row for " + sql);
      return rs.getString(1);
    }
  }

  static List<String> notifications(Connection c, int want, int timeoutMs) throws SQLException {
    List<String> got = new ArrayList<>();
    long end = System.currentTimeMillis() + timeoutMs;
    while (got.size() < want) {
      long left = end - System.currentTimeMillis();
      if (left <= 0) break;
      PGNotification[] ns = c.unwrap(PGConnection.class).getNotifications((int) left);
      if (ns == null) continue;
      for (PGNotification n : ns) got.add(n.getName() + ":" + n.getParameter());
    }
    return got;
  }

  public static void main(String[] args) throws Exception {
    String url = args[0], user = args[1], password = args[2], threshold = args[3];
    String defaultWorkMem = args[4];
    int rounds = Integer.parseInt(args[5]);
    try (Connection a = connect(url, user, password, threshold);
         Connection plain = connect(url, user, password, threshold);
         Connection h1 = connect(url, user, password, threshold);
         Connection h2 = connect(url, user, password, threshold)) {
      // SET through Statement.execute (extended protocol, unnamed statement)
      try (Statement st = a.createStatement()) {
        st.execute("SET work_mem = '9MB'");
      }
      // SET through a PreparedStatement, past the prepare threshold (named statement)
      try (PreparedStatement ps = a.prepareStatement("SET statement_timeout = '33s'")) {
        for (int i = 0; i < 6; i++) ps.execute();
      }
      Set<Integer> aPids = new TreeSet<>();
      Connection[] holders = {h1, h2};
      for (Connection h : holders) h.setAutoCommit(false);
      int lastA = -1;
      try (PreparedStatement showWm = a.prepareStatement("show work_mem");
           PreparedStatement showSt = a.prepareStatement("show statement_timeout");
           PreparedStatement aPid = a.prepareStatement("select pg_backend_pid()");
           PreparedStatement plainWm = plain.prepareStatement("show work_mem")) {
        for (int r = 0; r < rounds; r++) {
          // both servers taken by the holders, then the one A used last is given back
          int[] held = new int[2];
          for (int k = 0; k < 2; k++) held[k] = Integer.parseInt(scalar(holders[k],
              "select pg_backend_pid()"));
          check(held[0] != held[1], "holders on two servers");
          int free = held[0] == lastA ? 1 : 0;
          holders[free].commit();
          int busy = held[1 - free];
          int p = Integer.parseInt(scalar(aPid));
          check(p != busy, "A on the server a holder has");
          aPids.add(p);
          lastA = p;
          String wm = scalar(showWm);
          check(wm.equals("9MB"), "A round " + r + " work_mem " + wm + " on server " + p);
          String st = scalar(showSt);
          check(st.equals("33s"), "A round " + r + " statement_timeout " + st + " on " + p);
          String pwm = scalar(plainWm);
          check(pwm.equals(defaultWorkMem), "plain client round " + r + " saw work_mem " + pwm);
          holders[1 - free].commit();
        }
      }
      check(aPids.size() == 2, "A ran on " + aPids + ", expected both servers");

      // LISTEN through Statement.execute and through a PreparedStatement
      for (Connection h : holders) h.setAutoCommit(true);
      try (Statement st = a.createStatement()) {
        st.execute("LISTEN ch_jdbc");
      }
      try (PreparedStatement ps = a.prepareStatement("LISTEN ch_jdbc_prepared")) {
        ps.execute();
      }
      try (Statement st = plain.createStatement()) {
        st.execute("NOTIFY ch_jdbc, 'hello'");
        st.execute("NOTIFY ch_jdbc_prepared, 'hello prepared'");
      }
      List<String> got = notifications(a, 2, 5000);
      check(got.contains("ch_jdbc:hello"), "LISTEN via Statement: got " + got);
      check(got.contains("ch_jdbc_prepared:hello prepared"), "LISTEN via PreparedStatement: got "
          + got);
      check(scalar(a, "show work_mem").equals("9MB"), "A work_mem after LISTEN");
      // a notification sent while A runs other queries arrives too
      try (Statement st = plain.createStatement()) {
        st.execute("NOTIFY ch_jdbc, 'again'");
      }
      got = notifications(a, 1, 5000);
      check(got.contains("ch_jdbc:again"), "second notification: got " + got);
      System.out.println("OK threshold=" + threshold + " a_server_pids=" + aPids);
      System.exit(0);
    } catch (Throwable e) {
      e.printStackTrace();
      System.out.println("FAILED " + e);
      System.exit(1);
    }
  }
}
