// Session settings followed through either protocol and reset before the next lender.
#include <gtest/gtest.h>

#include "session/session.h"
#include "session_test_util.h"

namespace pgvalve::session::testing {
namespace {

TEST(SessionSettings, SetConfigSessionIsFollowedOnTheServerAndTheClient) {
  SessionHarness h;
  auto server = SessionHarness::fresh_server();
  h.send(query("select set_config('statement_timeout', '1234ms', false)"), *server);
  auto to_client = h.answer(row_result("1234ms", "SELECT 1"));
  EXPECT_EQ(tags_of(to_client), "TDCZ");
  ASSERT_EQ(h.last_ops.size(), 1u);
  EXPECT_EQ(h.last_ops[0].kind, LinkOp::Kind::Release);
  const Setting* on_server = server->settings.find("statement_timeout");
  ASSERT_NE(on_server, nullptr);
  EXPECT_EQ(on_server->value, "'1234ms'");
  const Setting* mine = h.session().client_settings().find("statement_timeout");
  ASSERT_NE(mine, nullptr);
}

}  // namespace
}  // namespace pgvalve::session::testing
