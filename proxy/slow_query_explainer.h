// stats.explain_slow: slow SELECTs the workers sampled (stats::QueryStats::take_explain_requests)
// are EXPLAINed — never ANALYZEd — once per statement shape, on a replica of the database's
// first shard (the primary when none takes reads), as the client's own user (EXPLAIN needs its
// privileges), in the background on the control thread; stats::plan_advice() turns each plan
// into the advice SHOW SLOW_QUERIES and /status show.
#pragma once

#include <chrono>
#include <memory>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "stats/query_stats.h"

namespace pgvalve::proxy {

class App;

class SlowQueryExplainer {
 public:
  SlowQueryExplainer(App& app, boost::asio::io_context& control) : app_(app), control_(control) {}
  // Runs until the control loop stops: every second, the requests gathered meanwhile.
  boost::asio::awaitable<void> run();

 private:
  boost::asio::awaitable<void> explain(const stats::ExplainRequest& request);

  App& app_;
  boost::asio::io_context& control_;
};

}  // namespace pgvalve::proxy
