// PgJDBC batch inserts whose rows belong to several shards: executeBatch() with
// reWriteBatchedInserts (one multi-row INSERT) and without (a Bind and Execute per row up to one
// Sync), and a hand-written multi-row INSERT through executeUpdate(), in autocommit and in a
// transaction (BEGIN in the flight of its first statement), with the default prepareThreshold
// and with 1. PgJDBC sends these with an Execute row limit of 1. Rows of scenario s are devices
// s*100+1 .. s*100+10.
// Usage: java -cp .:postgresql.jar JdbcShardedBatch URL USER PASSWORD
// Prints "OK <rows inserted>".
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.util.Properties;

public class JdbcShardedBatch {
  public static void main(String[] args) throws Exception {
    int inserted = 0;
    int scenario = 0;
    for (String rewrite : new String[] {"true", "false"}) {
      for (String threshold : new String[] {"5", "1"}) {
        for (boolean autocommit : new boolean[] {true, false}) {
          Properties props = new Properties();
          props.setProperty("user", args[1]);
          props.setProperty("password", args[2]);
          props.setProperty("reWriteBatchedInserts", rewrite);
          props.setProperty("prepareThreshold", threshold);
          final long base = scenario++ * 100L;
          try (Connection c = DriverManager.getConnection(args[0], props)) {
            c.setAutoCommit(autocommit);
            try (PreparedStatement batch =
                     c.prepareStatement("INSERT INTO telemetry (device_id, value) VALUES (?, ?)")) {
              for (int d = 1; d <= 8; d++) {
                batch.setLong(1, base + d);
                batch.setDouble(2, d);
                batch.addBatch();
              }
              for (int count : batch.executeBatch()) {
                if (count != 1 && count != java.sql.Statement.SUCCESS_NO_INFO) {
                  throw new IllegalStateException("batch count " + count);
                }
              }
              inserted += 8;
            }
            try (PreparedStatement two = c.prepareStatement(
                     "INSERT INTO telemetry (device_id, value) VALUES (?, ?), (?, ?)")) {
              two.setLong(1, base + 9);
              two.setDouble(2, 9);
              two.setLong(3, base + 10);
              two.setDouble(4, 10);
              final int count = two.executeUpdate();
              if (count != 2) throw new IllegalStateException("update count " + count);
              inserted += 2;
            }
            if (!autocommit) c.commit();
          }
        }
      }
    }
    System.out.println("OK " + inserted);
  }
}
