// PgJDBC's CopyManager against a sharded database through pgvalve: one COPY FROM STDIN in text
// format carries rows for many devices, which pgvalve sends each to its device's shard.
// Rows: i = 1..ROWS, device_id = 1 + (i * 7919) % DEVICES, ts = i, value = i + 0.5,
// note = NULL when i % 5 == 0, else "n<i> tab<TAB>here back\slash" (escaped as COPY text wants).
// The data is read through a small buffer, so rows are cut across CopyData messages.
// Then, on the same connection, a COPY with a NULL device_id in row 1001 (ts >= 1000000) must
// fail with SQLState 22004, and the connection must still run SELECT 1.
// Usage: java -cp .:postgresql.jar JdbcShardedCopy URL USER PASSWORD ROWS DEVICES
// Prints "OK <count copyIn returned>" and exits 0 when every check passed; exits 1 otherwise.

import java.io.StringReader;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class JdbcShardedCopy {
  static void check(boolean cond, String what) {
    if (!cond) throw new IllegalStateException("check failed: " + what);
  }

  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    props.setProperty("user", args[1]);
    props.setProperty("password", args[2]);
    final int rows = Integer.parseInt(args[3]);
    final int devices = Integer.parseInt(args[4]);
    StringBuilder data = new StringBuilder();
    for (int i = 1; i <= rows; ++i) {
      String note = i % 5 == 0 ? "\\N" : "n" + i + " tab\\there back\\\\slash";
      data.append(1 + (i * 7919L) % devices).append('\t').append(i).append('\t')
          .append(i + 0.5).append('\t').append(note).append('\n');
    }
    long copied;
    try (Connection c = DriverManager.getConnection(args[0], props)) {
      c.setAutoCommit(true); // pgvalve routes a COPY by row only outside a transaction
      CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
      copied = copy.copyIn("COPY telemetry (device_id, ts, value, note) FROM STDIN",
                           new StringReader(data.toString()), 997);

      StringBuilder bad = new StringBuilder();
      for (int i = 1; i <= 2000; ++i) {
        String device = i == 1001 ? "\\N" : Long.toString(1 + i % devices);
        bad.append(device).append('\t').append(1_000_000 + i).append('\n');
      }
      try {
        copy.copyIn("COPY telemetry (device_id, ts) FROM STDIN", new StringReader(bad.toString()));
        check(false, "a COPY with a NULL device_id succeeded");
      } catch (SQLException e) {
        check("22004".equals(e.getSQLState()), "SQLState " + e.getSQLState() + ": " + e);
        check(e.getMessage().contains("row 1001"), "message names the row: " + e.getMessage());
      }
      try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 1")) {
        check(r.next() && r.getInt(1) == 1, "SELECT 1 after the failed COPY");
      }
    }
    System.out.println("OK " + copied);
  }
}
