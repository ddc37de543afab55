// PgJDBC with autocommit off (BEGIN goes in the flight of each transaction's first statement):
// transactions whose rows belong to several shards commit on all of them, and one whose second
// statement fails rolls back on all of them. Prints "OK <rows committed>".
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.SQLException;

public class JdbcShardedTransaction {
  public static void main(String[] args) throws Exception {
    int transactions = Integer.parseInt(args[3]);
    int devicesPerTransaction = Integer.parseInt(args[4]);
    int committed = 0;
    try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
      c.setAutoCommit(false);
      try (PreparedStatement insert =
          c.prepareStatement("INSERT INTO telemetry (device_id, value) VALUES (?, ?)")) {
        for (int t = 0; t < transactions; t++) {
          for (int d = 0; d < devicesPerTransaction; d++) {
            insert.setLong(1, t * devicesPerTransaction + d + 1);
            insert.setDouble(2, t);
            insert.executeUpdate();
          }
          c.commit();
          committed += devicesPerTransaction;
        }
        // A failing statement (the CHECK) after rows on both shards: nothing of it stays.
        insert.setLong(1, 100001);
        insert.setDouble(2, 1);
        insert.executeUpdate();
        insert.setLong(1, 100002);
        insert.setDouble(2, -5000);
        try {
          insert.executeUpdate();
          throw new IllegalStateException("the CHECK did not fail");
        } catch (SQLException e) {
          if (!"23514".equals(e.getSQLState())) throw e;
        }
        c.rollback();
      }
    }
    System.out.println("OK " + committed);
  }
}
