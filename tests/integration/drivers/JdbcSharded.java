// PgJDBC against a sharded database through pgvalve: reads over several shards, gathered.
// From the fifth execution on (prepareThreshold=5) PgJDBC runs a PreparedStatement as a named
// server-side statement and asks for binary results of integer columns, which pgvalve must
// combine (count, sum, avg, stddev, var_pop) and merge (ORDER BY) as well as text ones.
// Usage: java -cp .:postgresql.jar JdbcSharded URL USER PASSWORD ROWS
// Prints "OK" and exits 0 when every check passed; exits 1 otherwise.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.Properties;

public class JdbcSharded {
  static void check(boolean cond, String what) {
    if (!cond) throw new IllegalStateException("check failed: " + what);
  }

  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    props.setProperty("user", args[1]);
    props.setProperty("password", args[2]);
    final long rows = Long.parseLong(args[3]);
    try (Connection c = DriverManager.getConnection(args[0], props)) {
      try (PreparedStatement count = c.prepareStatement(
               "SELECT count(*), sum(device_id), max(device_id) FROM telemetry WHERE value > ?");
           PreparedStatement ordered = c.prepareStatement(
               "SELECT device_id FROM telemetry WHERE value > ? ORDER BY device_id DESC LIMIT ?");
           PreparedStatement averages = c.prepareStatement(
               "SELECT avg(device_id), avg(value) AS mean FROM telemetry WHERE value > ?");
           PreparedStatement spreads = c.prepareStatement(
               "SELECT stddev(value), var_pop(device_id::float8) FROM telemetry WHERE value > ?")) {
        // avg() of bigint is numeric with PostgreSQL's scale: (rows + 1) / 2 to 16 places.
        final BigDecimal mean = new BigDecimal(rows + 1).divide(new BigDecimal(2)).setScale(16);
        for (int i = 0; i < 10; ++i) {
          count.setDouble(1, 0.0);
          try (ResultSet r = count.executeQuery()) {
            check(r.next(), "a row");
            check(r.getLong(1) == rows, "count " + r.getLong(1) + " in execution " + i);
            check(r.getLong(2) == rows * (rows + 1) / 2, "sum " + r.getLong(2));
            check(r.getLong(3) == rows, "max " + r.getLong(3));
          }
          ordered.setDouble(1, 0.0);
          ordered.setInt(2, 3);
          try (ResultSet r = ordered.executeQuery()) {
            for (long want = rows; want > rows - 3; --want) {
              check(r.next(), "row " + want);
              check(r.getLong(1) == want, "ordered " + r.getLong(1) + " for " + want);
            }
            check(!r.next(), "three rows");
          }
          averages.setDouble(1, 0.0);
          try (ResultSet r = averages.executeQuery()) {
            check(r.next(), "an average row");
            check(r.getBigDecimal(1).equals(mean), "avg " + r.getBigDecimal(1) + " in execution " + i);
            check(r.getDouble(2) == 1.0, "avg(value) " + r.getDouble(2));
            check(r.getMetaData().getColumnLabel(2).equals("mean"), "the alias");
            check(!r.next(), "one average row");
          }
          spreads.setDouble(1, 0.0);
          try (ResultSet r = spreads.executeQuery()) {
            check(r.next(), "a row of spreads");
            // Every value is 1; device_id runs 1..rows, whose population variance is (n^2-1)/12.
            check(r.getDouble(1) == 0.0, "stddev(value) " + r.getDouble(1));
            final double want = (rows * rows - 1) / 12.0;
            check(Math.abs(r.getDouble(2) - want) < 1e-9 * want,
                  "var_pop " + r.getDouble(2) + " in execution " + i);
            check(r.getMetaData().getColumnLabel(1).equals("stddev"), "stddev's name");
            check(!r.next(), "one row of spreads");
          }
        }
      }
    }
    System.out.println("OK");
  }
}
