// PgJDBC and a table that changes under a server-side prepared statement. With autocommit off
// and prepareThreshold=1 the driver keeps the statement's columns from its first execution and
// sends each transaction's BEGIN with its first statement. The program runs the statement, prints
// READY and waits for a line on stdin (the test changes the table meanwhile), then runs it again
// twice, each time in a transaction of its own.
// Usage: java -cp .:postgresql.jar JdbcSchemaChange URL USER PASSWORD
// Prints "OK <outcome> <outcome>": an outcome is the SQLSTATE of an error (its message goes to
// stderr), or "columns=N values=..".

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class JdbcSchemaChange {
  static String run(Connection c, PreparedStatement ps) throws SQLException {
    ps.setInt(1, 1);
    try (ResultSet rs = ps.executeQuery()) {
      ResultSetMetaData meta = rs.getMetaData();
      StringBuilder out = new StringBuilder("columns=" + meta.getColumnCount() + " values=");
      if (!rs.next()) throw new IllegalStateException("no row");
      for (int i = 1; i <= meta.getColumnCount(); i++) {
        out.append(i > 1 ? "," : "").append(rs.getString(i));
      }
      c.commit();
      return out.toString();
    } catch (SQLException e) {
      System.err.println(e.getSQLState() + ": " + e.getMessage());
      c.rollback();
      return e.getSQLState();
    }
  }

  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    props.setProperty("user", args[1]);
    props.setProperty("password", args[2]);
    props.setProperty("prepareThreshold", "1");
    props.setProperty("connectTimeout", "10");
    props.setProperty("socketTimeout", "30");
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
    try (Connection c = DriverManager.getConnection(args[0], props);
         PreparedStatement ps = c.prepareStatement("select * from jdbc_shape where a = ?")) {
      c.setAutoCommit(false);
      String before = run(c, ps);
      run(c, ps);
      System.out.println("READY " + before);
      System.out.flush();
      if (in.readLine() == null) throw new IllegalStateException("no go-ahead");
      List<String> after = new ArrayList<>();
      after.add(run(c, ps));
      after.add(run(c, ps));
      System.out.println("OK " + String.join(" ", after));
    }
  }
}
