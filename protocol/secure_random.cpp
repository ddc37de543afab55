#include "protocol/secure_random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace pgvalve::protocol {

namespace {

void draw(unsigned char* out, std::size_t n) {
  if (RAND_bytes(out, static_cast<int>(n)) != 1) {
    std::fputs("pgvalve: OpenSSL has no random bytes to give (RAND_bytes failed); stopping\n",
               stderr);
    std::abort();
  }
}

// Bytes drawn and not handed out yet: block[0, left).
struct Reserve {
  static constexpr std::size_t kBlock = 256;
  std::array<unsigned char, kBlock> block{};
  std::size_t left = 0;
  ~Reserve() { OPENSSL_cleanse(block.data(), block.size()); }
};

}  // namespace

void fill_random(std::span<unsigned char> out) {
  thread_local Reserve reserve;
  if (out.size() > Reserve::kBlock / 4) {
    draw(out.data(), out.size());
    return;
  }
  if (out.size() > reserve.left) {
    draw(reserve.block.data(), Reserve::kBlock);
    reserve.left = Reserve::kBlock;
  }
  reserve.left -= out.size();
  unsigned char* from = reserve.block.data() + reserve.left;
  std::memcpy(out.data(), from, out.size());
  OPENSSL_cleanse(from, out.size());
}

std::string random_bytes(std::size_t n) {
  std::string s(n, '\0');
  fill_random({reinterpret_cast<unsigned char*>(s.data()), n});
  return s;
}

}  // namespace pgvalve::protocol
