// A 64-bit hash no client can aim at: SipHash-2-4 under a key drawn at random when the process
// starts. pgvalve decides by hash alone in two places a client could exploit with a collision:
// which server-side prepared statement a client's statement is (the names, pgv_<hash>, are
// visible in pg_prepared_statements), and whether a server's settings already equal a client's.
// With an unknown key, finding a collision costs about 2^64 tries against a live pgvalve.
#pragma once

#include <cstdint>
#include <string_view>

namespace pgvalve::protocol {

class KeyedHash {
 public:
  KeyedHash();  // under the process's key
  KeyedHash(std::uint64_t k0, std::uint64_t k1);
  // Adds `bytes` followed by their length, so ("ab", "c") and ("a", "bc") differ.
  KeyedHash& add(std::string_view bytes);
  // Adds `bytes` alone (plain SipHash input).
  KeyedHash& add_bytes(std::string_view bytes);
  std::uint64_t finish() const;

 private:
  void absorb(std::uint64_t word);
  void push(unsigned char c);

  std::uint64_t v0_, v1_, v2_, v3_;
  std::uint64_t tail_ = 0;  // bytes not yet making a whole word
  unsigned tail_bytes_ = 0;
  std::uint64_t length_ = 0;
};

}  // namespace pgvalve::protocol
