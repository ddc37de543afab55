#include "protocol/keyed_hash.h"

#include <openssl/rand.h>

#include <array>
#include <cstdlib>

namespace pgvalve::protocol {

namespace {

struct Key {
  std::uint64_t k0 = 0;
  std::uint64_t k1 = 0;
};

const Key& process_key() {
  static const Key key = [] {
    std::array<unsigned char, 16> bytes{};
    // Without randomness the key would be guessable; better not to start.
    if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) std::abort();
    Key k;
    for (int i = 0; i < 8; ++i) {
      k.k0 |= std::uint64_t{bytes[static_cast<std::size_t>(i)]} << (8 * i);
      k.k1 |= std::uint64_t{bytes[static_cast<std::size_t>(8 + i)]} << (8 * i);
    }
    return k;
  }();
  return key;
}

constexpr std::uint64_t rotl(std::uint64_t x, int b) {
  return (x << b) | (x >> (64 - b));
}

void round(std::uint64_t& v0, std::uint64_t& v1, std::uint64_t& v2, std::uint64_t& v3) {
  v0 += v1;
  v1 = rotl(v1, 13);
  v1 ^= v0;
  v0 = rotl(v0, 32);
  v2 += v3;
  v3 = rotl(v3, 16);
  v3 ^= v2;
  v0 += v3;
  v3 = rotl(v3, 21);
  v3 ^= v0;
  v2 += v1;
  v1 = rotl(v1, 17);
  v1 ^= v2;
  v2 = rotl(v2, 32);
}

}  // namespace

KeyedHash::KeyedHash() : KeyedHash(process_key().k0, process_key().k1) {}

KeyedHash::KeyedHash(std::uint64_t k0, std::uint64_t k1)
    : v0_(k0 ^ 0x736f6d6570736575ull),
      v1_(k1 ^ 0x646f72616e646f6dull),
      v2_(k0 ^ 0x6c7967656e657261ull),
      v3_(k1 ^ 0x7465646279746573ull) {}

void KeyedHash::absorb(std::uint64_t word) {
  v3_ ^= word;
  round(v0_, v1_, v2_, v3_);
  round(v0_, v1_, v2_, v3_);
  v0_ ^= word;
}

void KeyedHash::push(unsigned char c) {
  tail_ |= std::uint64_t{c} << (8 * tail_bytes_);
  ++length_;
  if (++tail_bytes_ == 8) {
    absorb(tail_);
    tail_ = 0;
    tail_bytes_ = 0;
  }
}

KeyedHash& KeyedHash::add_bytes(std::string_view bytes) {
  for (unsigned char c : bytes)
    push(c);
  return *this;
}

KeyedHash& KeyedHash::add(std::string_view bytes) {
  add_bytes(bytes);
  // The length after each part: no two splits of the same bytes hash alike.
  for (int i = 0; i < 8; ++i)
    push(static_cast<unsigned char>(static_cast<std::uint64_t>(bytes.size()) >> (8 * i)));
  return *this;
}

std::uint64_t KeyedHash::finish() const {
  std::uint64_t v0 = v0_, v1 = v1_, v2 = v2_, v3 = v3_;
  const std::uint64_t last = tail_ | (length_ << 56);
  v3 ^= last;
  round(v0, v1, v2, v3);
  round(v0, v1, v2, v3);
  v0 ^= last;
  v2 ^= 0xff;
  for (int i = 0; i < 4; ++i)
    round(v0, v1, v2, v3);
  return v0 ^ v1 ^ v2 ^ v3;
}

}  // namespace pgvalve::protocol
