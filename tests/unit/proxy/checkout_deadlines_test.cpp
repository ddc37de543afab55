// The worker's list of checkout deadlines: each waiting client is told once, at its deadline, in
// deadline order; one that left the list is never told. A wait that asked to be looked at when
// it has lasted a while is told that too, once, before its deadline.
#include "proxy/checkout_deadlines.h"

#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>

namespace pgvalve::proxy {
namespace {

using namespace std::chrono_literals;
using Clock = CheckoutDeadlines::Clock;

struct Waiting : CheckoutDeadlines::Entry {
  Waiting(std::string n, std::vector<std::string>& log) : name(std::move(n)), told(log) {}
  void on_checkout_deadline() override {
    told.push_back(name);
    at = Clock::now();
  }
  void on_long_wait() override {
    told.push_back(name + " looked at");
    looked_at = Clock::now();
  }
  std::string name;
  std::vector<std::string>& told;
  Clock::time_point at{};
  Clock::time_point looked_at{};
};

TEST(CheckoutDeadlines, TellsEachWaiterAtItsDeadlineInOrder) {
  boost::asio::io_context io;
  std::vector<std::string> told;
  CheckoutDeadlines deadlines(io);
  Waiting a("a", told), b("b", told), c("c", told);
  const auto start = Clock::now();
  deadlines.add(b, start + 40ms);
  deadlines.add(c, start + 60ms);
  deadlines.add(a, start + 20ms);  // earlier than the armed timer: re-arms it
  io.run_for(1s);
  EXPECT_EQ(told, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_GE(a.at, start + 20ms);
  EXPECT_GE(b.at, start + 40ms);
  EXPECT_GE(c.at, start + 60ms);
  EXPECT_FALSE(a.queued() || b.queued() || c.queued());
}

TEST(CheckoutDeadlines, AWaiterThatLeftIsNotTold) {
  boost::asio::io_context io;
  std::vector<std::string> told;
  CheckoutDeadlines deadlines(io);
  Waiting granted("granted", told), late("late", told);
  const auto start = Clock::now();
  deadlines.add(granted, start + 10ms);
  deadlines.add(late, start + 30ms);
  deadlines.remove(granted);  // the timer stays armed for 10 ms and finds `late` not yet due
  deadlines.remove(granted);  // twice is harmless
  io.run_for(1s);
  EXPECT_EQ(told, (std::vector<std::string>{"late"}));
  EXPECT_GE(late.at, start + 30ms);
}

TEST(CheckoutDeadlines, AddingAgainMovesTheDeadline) {
  boost::asio::io_context io;
  std::vector<std::string> told;
  CheckoutDeadlines deadlines(io);
  Waiting first("first", told), second("second", told);
  const auto start = Clock::now();
  deadlines.add(first, start + 10ms);
  deadlines.add(second, start + 20ms);
  deadlines.add(first, start + 40ms);  // waits again after a grant that came to nothing
  io.run_for(1s);
  EXPECT_EQ(told, (std::vector<std::string>{"second", "first"}));
}

TEST(CheckoutDeadlines, AWaiterToldMayWaitAgain) {
  boost::asio::io_context io;
  std::vector<std::string> told;
  CheckoutDeadlines deadlines(io);
  struct Again : Waiting {
    using Waiting::Waiting;
    CheckoutDeadlines* list = nullptr;
    int left = 2;
    void on_checkout_deadline() override {
      Waiting::on_checkout_deadline();
      if (--left > 0) list->add(*this, Clock::now() + 5ms);
    }
  } again("again", told);
  again.list = &deadlines;
  deadlines.add(again, Clock::now() + 5ms);
  io.run_for(1s);
  EXPECT_EQ(told, (std::vector<std::string>{"again", "again"}));
}

TEST(CheckoutDeadlines, ALongWaitIsLookedAtOnceThenToldAtItsDeadline) {
  boost::asio::io_context io;
  std::vector<std::string> told;
  CheckoutDeadlines deadlines(io);
  Waiting looked("looked", told), plain("plain", told), late_look("late look", told);
  const auto start = Clock::now();
  deadlines.add(looked, start + 60ms, start + 10ms);
  deadlines.add(plain, start + 30ms);
  deadlines.add(late_look, start + 40ms, start + 50ms);  // a look after the deadline: none
  io.run_for(1s);
  EXPECT_EQ(told, (std::vector<std::string>{"looked looked at", "plain", "late look", "looked"}));
  EXPECT_GE(looked.looked_at, start + 10ms);
  EXPECT_LT(looked.looked_at, looked.at);
  EXPECT_GE(looked.at, start + 60ms);
  EXPECT_FALSE(looked.queued() || plain.queued() || late_look.queued());
}

TEST(CheckoutDeadlines, AWaitEndedWhenLookedAtIsNotToldItsDeadline) {
  boost::asio::io_context io;
  std::vector<std::string> told;
  CheckoutDeadlines deadlines(io);
  struct Leaves : Waiting {
    using Waiting::Waiting;
    CheckoutDeadlines* list = nullptr;
    void on_long_wait() override {
      Waiting::on_long_wait();
      list->remove(*this);  // the client had hung up
    }
  } gone("gone", told);
  gone.list = &deadlines;
  Waiting granted("granted", told);
  const auto start = Clock::now();
  deadlines.add(gone, start + 30ms, start + 5ms);
  deadlines.add(granted, start + 30ms, start + 10ms);
  deadlines.remove(granted);  // granted before anyone looked
  io.run_for(1s);
  EXPECT_EQ(told, (std::vector<std::string>{"gone looked at"}));
  EXPECT_FALSE(gone.queued());
}

TEST(CheckoutDeadlines, EntriesOutliveTheList) {
  boost::asio::io_context io;
  std::vector<std::string> told;
  Waiting survivor("survivor", told);
  {
    CheckoutDeadlines deadlines(io);
    deadlines.add(survivor, Clock::now() + 1h);
  }
  EXPECT_FALSE(survivor.queued());
}

}  // namespace
}  // namespace pgvalve::proxy
