// Who may connect: the decision taken for every accepted socket, before a byte is read.
//
// Counts every open client socket (logging in, logged in, admin console) against
// pool.max_client_connections, and per source address against limits.connections_per_ip, and
// meters new connections per address with a token bucket (limits.connect_rate_per_ip per
// second, limits.connect_burst_per_ip at once), as nginx's limit_conn / limit_req do. Pure and
// single-threaded: the proxy holds it under a lock it takes once per accept and once per close.
//
// Memory is bounded: an address is tracked while it has open connections (at most
// max_client_connections of them) or while its bucket is refilling; of the latter at most
// `max_idle_addresses` are kept, the least recently seen forgotten first (it gets a full burst
// again, the only cost).
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace pgvalve::admission {

using Clock = std::chrono::steady_clock;

// An IPv4 address is stored IPv4-mapped (::ffff:a.b.c.d), so both families share one table.
struct Address {
  std::array<std::uint8_t, 16> bytes{};
  bool operator==(const Address&) const = default;
  static Address v4(std::uint32_t host_order);
  static Address v6(const std::array<std::uint8_t, 16>& bytes);
  std::string to_string() const;
};

struct AddressHash {
  std::size_t operator()(const Address& a) const noexcept;
};

struct Limits {
  int max_clients = 10000;  // pool.max_client_connections
  int per_address = 0;      // limits.connections_per_ip; 0 = unlimited
  int rate_per_s = 0;       // limits.connect_rate_per_ip; 0 = unlimited
  int burst = 20;           // limits.connect_burst_per_ip
};

enum class Verdict {
  Admit,
  TooManyClients,      // max_clients sockets are open
  TooManyFromAddress,  // per_address sockets from this address are open
  TooFastFromAddress,  // this address has no token left
};

class Admission {
 public:
  explicit Admission(std::size_t max_idle_addresses = 16384)
      : max_idle_addresses_(max_idle_addresses) {}

  // Admit counts the socket until leave(). A refusal counts nothing, and takes no token: an
  // address hammering a full door is not locked out once the door has room.
  Verdict admit(const Address& from, const Limits& limits, Clock::time_point now);
  void leave(const Address& from);

  // A cancel request arrived on a socket answered `verdict` at accept. It counts against the
  // connect rate as a connection does, or cancel keys could be guessed at any speed through a
  // door refusing the connections: false (drop it) when the socket was refused for the rate, or
  // was refused for another limit and the address has no token left (one is taken otherwise).
  bool cancel_admitted(const Address& from, Verdict verdict, const Limits& limits,
                       Clock::time_point now);

  // Failed logins are counted per address and user name, so one user's success does not clear
  // another's failures. The first few failures cost nothing; from then on each failure is
  // answered twice as late as the one before, up to 5 s, so guessing one user's password from
  // one address slows to a crawl. The user's success, or a minute without failures, forgets
  // them. Only addresses with open sockets are counted (the client is connected while it fails).
  //
  // Parallel guesses are held back too: once a user has failed from an address, its logins from
  // there that are still unanswered count as failures to come, so past the free ones only one
  // at a time is checked, and it holds its turn until its (late) answer is sent, even if the
  // client hung up. A user with no recent failure is not limited (a pool opening 100
  // connections at once); connect_rate_per_ip bounds a first burst of guesses.
  struct LoginTurn {
    bool go = true;  // false: another login of the user is being checked; ask again shortly
    bool counted = false;
    bool others = false;  // counted in the address's bucket for untracked names
  };
  LoginTurn login_begins(const Address& from, std::string_view user, Clock::time_point now);
  // The proof was wrong: how long to wait before answering.
  std::chrono::milliseconds login_failed(const Address& from, std::string_view user,
                                         Clock::time_point now);
  void login_succeeded(const Address& from, std::string_view user);
  // After the answer was sent (or could not be): gives the turn back.
  void login_ended(const Address& from, std::string_view user, const LoginTurn& turn);
  static constexpr int kFreeLoginFailures = 3;
  static constexpr std::chrono::milliseconds kMaxLoginDelay{5000};
  // User names tracked per address; failures of further names share one bucket, so a flood of
  // names neither grows the table nor pushes a name's failures out.
  static constexpr std::size_t kTrackedUsersPerAddress = 8;

  int open() const { return open_; }
  int open_from(const Address& from) const;
  std::size_t tracked_addresses() const { return addresses_.size(); }

 private:
  struct Logins {
    std::uint64_t user = 0;  // hash of the name: a collision merges two names' counts, no more
    int failures = 0;
    int unanswered = 0;  // logins begun and not ended (LoginTurn::counted)
    Clock::time_point last_failure{};
  };
  struct Entry {
    int open = 0;
    double tokens = 0;
    Clock::time_point refilled{};
    std::vector<Logins> logins;  // at most kTrackedUsersPerAddress; empty until a failure
    Logins other_logins;         // names beyond those
    std::list<Address>::iterator idle_position;  // valid while open == 0
  };
  void refill(Entry& e, const Limits& limits, Clock::time_point now) const;
  // The address's entry, made with a full bucket (and idle) if there was none.
  Entry& entry(const Address& from, const Limits& limits, Clock::time_point now);
  void became_idle(const Address& from, Entry& e);
  // The counts of `user` (forgetting those a quiet minute ended): its own, the shared bucket
  // when the address tracks as many names as it may, or null (no recent failure, room left).
  static Logins* logins_of(Entry& e, std::uint64_t user, Clock::time_point now, bool& others);

  std::unordered_map<Address, Entry, AddressHash> addresses_;
  std::list<Address> idle_;  // addresses with no open socket, least recently seen first
  const std::size_t max_idle_addresses_;
  int open_ = 0;
};

}  // namespace pgvalve::admission
