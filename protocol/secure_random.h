// Unpredictable bytes for what a login hands out: SCRAM nonces, MD5 salts, cancel keys.
#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace pgvalve::protocol {

// From OpenSSL's random generator. A call to RAND_bytes costs OpenSSL 3 a provider lookup and a
// cipher set-up (about 6,700 instructions) whatever its size, twice per client login; so each
// thread draws a block at a time and hands every byte out once, wiping it as it goes. Aborts
// when OpenSSL has no randomness to give: a predictable nonce or cancel key would be worse.
void fill_random(std::span<unsigned char> out);
std::string random_bytes(std::size_t n);

}  // namespace pgvalve::protocol
