#include "protocol/auth.h"

#include <idn-free.h>
#include <stringprep.h>

#include <algorithm>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <array>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <initializer_list>
#include <memory>

namespace pgvalve::protocol {

namespace {

constexpr std::size_t kKeyLen = 32;  // SHA-256 output
constexpr char kB64Alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const unsigned char* bytes(std::string_view s) {
  // OpenSSL takes unsigned pointers and some of its functions reject NULL even for length 0.
  static const unsigned char kEmpty = 0;
  return s.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(s.data());
}

// OpenSSL 3 looks a digest up by name on every one-shot call (EVP_sha256() in HMAC(), EVP_Digest):
// locks, string compares and a fresh context, several times the cost of the hashing itself for
// the short inputs of a login. The digest is fetched once and each thread reuses one context.
const EVP_MD* sha256_digest() {
  static const std::unique_ptr<EVP_MD, decltype(&EVP_MD_free)> md(
      EVP_MD_fetch(nullptr, "SHA256", nullptr), &EVP_MD_free);
  if (!md) std::abort();  // the default provider is missing: no login could be checked
  return md.get();
}

// SHA-256 of the concatenated parts, into out[0..32).
void sha256_parts(std::initializer_list<std::string_view> parts, unsigned char* out) {
  thread_local const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(),
                                                                                 &EVP_MD_CTX_free);
  unsigned int len = 0;
  if (!ctx || EVP_DigestInit_ex2(ctx.get(), sha256_digest(), nullptr) != 1) std::abort();
  for (std::string_view part : parts)
    EVP_DigestUpdate(ctx.get(), bytes(part), part.size());
  EVP_DigestFinal_ex(ctx.get(), out, &len);
}

std::string sha256(std::string_view data) {
  std::string out(kKeyLen, '\0');
  sha256_parts({data}, reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

}  // namespace

std::string hmac_sha256(std::string_view key, std::string_view data) {
  // RFC 2104 over SHA-256's 64-byte blocks; a longer key is hashed first.
  constexpr std::size_t kBlock = 64;
  std::array<unsigned char, kBlock> padded{};
  if (key.size() > kBlock) {
    sha256_parts({key}, padded.data());
  } else {
    std::copy(key.begin(), key.end(), padded.begin());
  }
  std::array<char, kBlock> pad;
  for (std::size_t i = 0; i < kBlock; ++i)
    pad[i] = static_cast<char>(padded[i] ^ 0x36);
  std::array<unsigned char, kKeyLen> inner;
  sha256_parts({{pad.data(), kBlock}, data}, inner.data());
  for (std::size_t i = 0; i < kBlock; ++i)
    pad[i] = static_cast<char>(padded[i] ^ 0x5c);
  std::string out(kKeyLen, '\0');
  sha256_parts({{pad.data(), kBlock}, {reinterpret_cast<const char*>(inner.data()), kKeyLen}},
               reinterpret_cast<unsigned char*>(out.data()));
  OPENSSL_cleanse(padded.data(), padded.size());
  OPENSSL_cleanse(pad.data(), pad.size());
  OPENSSL_cleanse(inner.data(), inner.size());
  return out;
}

namespace {

// RFC 5802 Hi(): PBKDF2 with HMAC-SHA-256 and one output block.
std::string salted_password(std::string_view password, std::string_view salt, int iterations) {
  std::string out(kKeyLen, '\0');
  // SASLprep'd first, as PostgreSQL does when it stores a verifier and libpq when it logs in.
  const std::string prepared = saslprep(password);
  PKCS5_PBKDF2_HMAC(prepared.data(), static_cast<int>(prepared.size()), bytes(salt),
                    static_cast<int>(salt.size()), iterations, sha256_digest(),
                    static_cast<int>(kKeyLen), reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

std::string xor_bytes(std::string_view a, std::string_view b) {
  std::string out(a);
  for (std::size_t i = 0; i < out.size() && i < b.size(); ++i)
    out[i] = static_cast<char>(a[i] ^ b[i]);
  return out;
}

std::string to_hex(const unsigned char* p, std::size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 0xf]);
  }
  return out;
}

std::string md5_hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes(data), data.size(), digest, &len, EVP_md5(), nullptr);
  return to_hex(digest, len);
}

std::optional<int> parse_positive_int(std::string_view s) {
  int v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v <= 0) return std::nullopt;
  return v;
}

// SCRAM nonces are printable ASCII without ',' (RFC 5802 section 7).
bool is_scram_printable(std::string_view s) {
  for (char ch : s) {
    if (ch < 0x21 || ch > 0x7e || ch == ',') return false;
  }
  return true;
}

// Walks a SCRAM message of comma-separated "x=value" attributes.
class ScramReader {
 public:
  explicit ScramReader(std::string_view msg) : msg_(msg) {}

  bool at_end() const { return pos_ == msg_.size(); }
  std::size_t pos() const { return pos_; }
  char peek() const { return at_end() ? '\0' : msg_[pos_]; }

  // Reads "<name>=value" up to the next ',' (consumed) or the end.
  std::optional<std::string_view> attr(char name) {
    if (peek() != name) return std::nullopt;
    return any_attr(nullptr);
  }
  std::optional<std::string_view> any_attr(char* name) {
    if (msg_.size() - pos_ < 2 || msg_[pos_ + 1] != '=') return std::nullopt;
    const char n = msg_[pos_];
    if (!((n >= 'a' && n <= 'z') || (n >= 'A' && n <= 'Z'))) return std::nullopt;
    if (name != nullptr) *name = n;
    const std::size_t start = pos_ + 2;
    std::size_t end = msg_.find(',', start);
    if (end == std::string_view::npos) end = msg_.size();
    if (end + 1 == msg_.size()) return std::nullopt;  // a trailing ',' announces a missing attr
    pos_ = end == msg_.size() ? end : end + 1;
    return msg_.substr(start, end - start);
  }
  bool expect(char ch) {
    if (peek() != ch || at_end()) return false;
    ++pos_;
    return true;
  }

 private:
  std::string_view msg_;
  std::size_t pos_ = 0;
};

constexpr const char* kMalformed = "malformed SCRAM message";

// RFC 5802 saslname: ',' and '=' are escaped.
std::string escape_saslname(std::string_view user) {
  std::string out;
  for (char ch : user) {
    if (ch == ',') {
      out += "=2C";
    } else if (ch == '=') {
      out += "=3D";
    } else {
      out.push_back(ch);
    }
  }
  return out;
}

}  // namespace

bool equal_secret(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string saslprep(std::string_view password) {
  const bool ascii = std::all_of(password.begin(), password.end(),
                                 [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  if (ascii || password.find('\0') != std::string_view::npos) return std::string(password);
  const std::string in(password);
  char* out = nullptr;
  // Unassigned code points are prohibited, as for stored strings (RFC 4013 §2.5).
  const int rc = stringprep_profile(in.c_str(), &out, "SASLprep", STRINGPREP_NO_UNASSIGNED);
  if (rc != STRINGPREP_OK || out == nullptr) {
    if (out) idn_free(out);
    return in;
  }
  std::string prepared(out);
  idn_free(out);
  return prepared;
}

ScramVerifier mock_scram_verifier(std::string_view secret, std::string_view user) {
  const std::string name(user);
  ScramVerifier v;
  v.iterations = kDefaultScramIterations;
  v.salt = hmac_sha256(secret, "mock salt\0" + name).substr(0, 16);
  v.stored_key = hmac_sha256(secret, "mock stored key\0" + name);
  v.server_key = hmac_sha256(secret, "mock server key\0" + name);
  return v;
}

// ---- base64 ------------------------------------------------------------------------------------

std::string base64_encode(std::string_view raw) {
  std::string out;
  out.reserve((raw.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(raw[k]); };
  for (; i + 3 <= raw.size(); i += 3) {
    const std::uint32_t v = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
    out.push_back(kB64Alphabet[(v >> 18) & 63]);
    out.push_back(kB64Alphabet[(v >> 12) & 63]);
    out.push_back(kB64Alphabet[(v >> 6) & 63]);
    out.push_back(kB64Alphabet[v & 63]);
  }
  if (raw.size() - i == 1) {
    const std::uint32_t v = byte(i) << 16;
    out.push_back(kB64Alphabet[(v >> 18) & 63]);
    out.push_back(kB64Alphabet[(v >> 12) & 63]);
    out += "==";
  } else if (raw.size() - i == 2) {
    const std::uint32_t v = (byte(i) << 16) | (byte(i + 1) << 8);
    out.push_back(kB64Alphabet[(v >> 18) & 63]);
    out.push_back(kB64Alphabet[(v >> 12) & 63]);
    out.push_back(kB64Alphabet[(v >> 6) & 63]);
    out.push_back('=');
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  auto value = [](char ch) -> int {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    int pad = 0;
    if (last && text[i + 3] == '=') pad = text[i + 2] == '=' ? 2 : 1;
    std::uint32_t v = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      int d = 0;
      if (k < 4 - static_cast<std::size_t>(pad)) {
        d = value(text[i + k]);
        if (d < 0) return std::nullopt;
      }
      v = (v << 6) | static_cast<std::uint32_t>(d);
    }
    // Bits under the padding must be zero, otherwise two texts would decode to the same bytes.
    if ((pad == 1 && (v & 0xff) != 0) || (pad == 2 && (v & 0xffff) != 0)) return std::nullopt;
    out.push_back(static_cast<char>(v >> 16));
    if (pad < 2) out.push_back(static_cast<char>(v >> 8));
    if (pad < 1) out.push_back(static_cast<char>(v));
  }
  return out;
}

// ---- md5
// -----------------------------------------------------------------------------------------

std::string md5_password_hash(std::string_view user, std::string_view password) {
  std::string input;
  input.reserve(password.size() + user.size());
  input.append(password).append(user);
  return "md5" + md5_hex(input);
}

std::string md5_salted_response(std::string_view stored_hash, std::string_view salt4) {
  std::string input(is_md5_hash(stored_hash) ? stored_hash.substr(3) : stored_hash);
  input.append(salt4);
  return "md5" + md5_hex(input);
}

// ---- SCRAM verifier
// ------------------------------------------------------------------------------

std::optional<ScramVerifier> ScramVerifier::parse(std::string_view text) {
  if (!is_scram_verifier(text)) return std::nullopt;
  text.remove_prefix(std::string_view("SCRAM-SHA-256$").size());
  const std::size_t colon1 = text.find(':');
  const std::size_t dollar = text.find('$');
  if (colon1 == std::string_view::npos || dollar == std::string_view::npos || dollar < colon1) {
    return std::nullopt;
  }
  const std::size_t colon2 = text.find(':', dollar);
  if (colon2 == std::string_view::npos) return std::nullopt;

  auto iterations = parse_positive_int(text.substr(0, colon1));
  auto salt = base64_decode(text.substr(colon1 + 1, dollar - colon1 - 1));
  auto stored_key = base64_decode(text.substr(dollar + 1, colon2 - dollar - 1));
  auto server_key = base64_decode(text.substr(colon2 + 1));
  if (!iterations || !salt || salt->empty() || !stored_key || stored_key->size() != kKeyLen ||
      !server_key || server_key->size() != kKeyLen) {
    return std::nullopt;
  }
  return ScramVerifier{*iterations, std::move(*salt), std::move(*stored_key),
                       std::move(*server_key)};
}

ScramVerifier ScramVerifier::from_password(std::string_view password, std::string_view salt,
                                           int iterations) {
  const std::string salted = salted_password(password, salt, iterations);
  ScramVerifier v;
  v.iterations = iterations;
  v.salt.assign(salt);
  v.stored_key = sha256(hmac_sha256(salted, "Client Key"));
  v.server_key = hmac_sha256(salted, "Server Key");
  return v;
}

std::string ScramVerifier::to_string() const {
  return "SCRAM-SHA-256$" + std::to_string(iterations) + ":" + base64_encode(salt) + "$" +
         base64_encode(stored_key) + ":" + base64_encode(server_key);
}

// ---- SCRAM server role
// ----------------------------------------------------------------------------

ScramServer::ScramServer(ScramVerifier verifier, std::string_view server_nonce)
    : verifier_(std::move(verifier)), server_nonce_b64_(base64_encode(server_nonce)) {}

ScramServer ScramServer::with_encoded_nonce(ScramVerifier verifier,
                                            std::string_view server_nonce_text) {
  ScramServer server(std::move(verifier), {});
  server.server_nonce_b64_.assign(server_nonce_text);
  return server;
}

std::optional<std::string> ScramServer::handle_client_first(std::string_view message,
                                                            std::string& error) {
  if (!server_first_.empty()) {
    error = "unexpected SCRAM client-first-message";
    return std::nullopt;
  }
  ScramReader r(message);
  // gs2-header: channel-binding flag, then an authzid we do not support.
  const char flag = r.peek();
  if (flag == 'p') {
    error = "SCRAM channel binding was requested, but pgvalve does not offer SCRAM-SHA-256-PLUS";
    return std::nullopt;
  }
  if ((flag != 'n' && flag != 'y') || !r.expect(flag) || !r.expect(',')) {
    error = kMalformed;
    return std::nullopt;
  }
  if (r.peek() == 'a') {
    error = "client uses authorization identity, but it is not supported";
    return std::nullopt;
  }
  if (!r.expect(',')) {
    error = kMalformed;
    return std::nullopt;
  }
  const std::size_t bare_start = r.pos();
  if (r.peek() == 'm') {
    error = "client requires an unsupported SCRAM extension";
    return std::nullopt;
  }
  // The user name is ignored, as in PostgreSQL: the startup packet's user is authoritative.
  auto user = r.attr('n');
  auto nonce = r.attr('r');
  if (!user || !nonce) {
    error = kMalformed;
    return std::nullopt;
  }
  if (nonce->empty() || !is_scram_printable(*nonce)) {
    error = "non-printable characters in SCRAM nonce";
    return std::nullopt;
  }
  char name = 0;
  while (!r.at_end()) {  // extensions after the nonce are allowed and ignored
    if (!r.any_attr(&name)) {
      error = kMalformed;
      return std::nullopt;
    }
  }
  cbind_flag_ = flag;
  client_first_bare_.assign(message.substr(bare_start));
  combined_nonce_.assign(*nonce).append(server_nonce_b64_);
  server_first_ = "r=" + combined_nonce_ + ",s=" + base64_encode(verifier_.salt) +
                  ",i=" + std::to_string(verifier_.iterations);
  return server_first_;
}

std::optional<std::string> ScramServer::handle_client_final(std::string_view message,
                                                            std::string& error) {
  if (server_first_.empty()) {
    error = "unexpected SCRAM client-final-message";
    return std::nullopt;
  }
  ScramReader r(message);
  auto cbind = r.attr('c');
  auto nonce = r.attr('r');
  if (!cbind || !nonce) {
    error = kMalformed;
    return std::nullopt;
  }
  // Without channel binding, c= is the base64 of the gs2 header sent before: "n,," or "y,,".
  if (!(*cbind == "biws" && cbind_flag_ == 'n') && !(*cbind == "eSws" && cbind_flag_ == 'y')) {
    error = "unexpected SCRAM channel-binding attribute in client-final-message";
    return std::nullopt;
  }
  if (*nonce != combined_nonce_) {
    error = "SCRAM nonce mismatch";
    return std::nullopt;
  }
  std::size_t proof_start = 0;
  std::optional<std::string_view> proof;
  char name = 0;
  while (name != 'p') {
    proof_start = r.pos();
    proof = r.any_attr(&name);
    if (!proof) {
      error = kMalformed;
      return std::nullopt;
    }
  }
  if (!r.at_end()) {  // the proof must be the last attribute
    error = "malformed SCRAM message (garbage at end of client-final-message)";
    return std::nullopt;
  }
  auto proof_raw = base64_decode(*proof);
  if (!proof_raw || proof_raw->size() != kKeyLen) {
    error = "malformed SCRAM message (invalid proof)";
    return std::nullopt;
  }
  // client-final-message-without-proof excludes the ',' before "p=".
  const std::string_view without_proof = message.substr(0, proof_start - 1);
  std::string auth_message = client_first_bare_;
  auth_message.append(",").append(server_first_).append(",").append(without_proof);

  const std::string client_signature = hmac_sha256(verifier_.stored_key, auth_message);
  const std::string client_key = xor_bytes(*proof_raw, client_signature);
  if (!equal_secret(sha256(client_key), verifier_.stored_key)) {
    error = "password authentication failed (SCRAM proof does not match)";
    return std::nullopt;
  }
  return "v=" + base64_encode(hmac_sha256(verifier_.server_key, auth_message));
}

// ---- SCRAM client role
// ----------------------------------------------------------------------------

ScramClient::ScramClient(std::string_view password, std::string_view client_nonce_raw)
    : password_(password), client_nonce_b64_(base64_encode(client_nonce_raw)) {
  client_first_bare_ = "n=,r=" + client_nonce_b64_;
}

ScramClient ScramClient::with_encoded_nonce(std::string_view password,
                                            std::string_view client_nonce_text,
                                            std::string_view user) {
  ScramClient client(password, {});
  client.client_nonce_b64_.assign(client_nonce_text);
  client.client_first_bare_ = "n=" + escape_saslname(user) + ",r=" + client.client_nonce_b64_;
  return client;
}

std::string ScramClient::client_first() const {
  return "n,," + client_first_bare_;
}

std::optional<std::string> ScramClient::handle_server_first(std::string_view message,
                                                            std::string& error) {
  ScramReader r(message);
  if (r.peek() == 'm') {
    error = "server requires an unsupported SCRAM extension";
    return std::nullopt;
  }
  auto nonce = r.attr('r');
  auto salt_b64 = r.attr('s');
  auto iterations_text = r.attr('i');
  if (!nonce || !salt_b64 || !iterations_text || !r.at_end()) {
    error = "malformed SCRAM server-first-message";
    return std::nullopt;
  }
  if (nonce->size() <= client_nonce_b64_.size() || !nonce->starts_with(client_nonce_b64_) ||
      !is_scram_printable(*nonce)) {
    error = "invalid SCRAM response (nonce mismatch)";
    return std::nullopt;
  }
  auto salt = base64_decode(*salt_b64);
  if (!salt || salt->empty()) {
    error = "malformed SCRAM server-first-message (invalid salt)";
    return std::nullopt;
  }
  auto iterations = parse_positive_int(*iterations_text);
  if (!iterations) {
    error = "malformed SCRAM server-first-message (invalid iteration count)";
    return std::nullopt;
  }
  if (*iterations > kMaxScramIterations) {
    error = "SCRAM iteration count " + std::to_string(*iterations) + " is above the " +
            std::to_string(kMaxScramIterations) + " pgvalve accepts";
    return std::nullopt;
  }

  std::string final_message = "c=biws,r=";
  final_message.append(*nonce);
  std::string auth_message = client_first_bare_;
  auth_message.append(",").append(message).append(",").append(final_message);

  const std::string salted = salted_password(password_, *salt, *iterations);
  const std::string client_key = hmac_sha256(salted, "Client Key");
  const std::string client_signature = hmac_sha256(sha256(client_key), auth_message);
  expected_server_signature_ = hmac_sha256(hmac_sha256(salted, "Server Key"), auth_message);

  final_message.append(",p=").append(base64_encode(xor_bytes(client_key, client_signature)));
  return final_message;
}

bool ScramClient::verify_server_final(std::string_view message, std::string& error) const {
  if (expected_server_signature_.empty()) {
    error = "unexpected SCRAM server-final-message";
    return false;
  }
  ScramReader r(message);
  if (r.peek() == 'e') {
    auto server_error = r.attr('e');
    error = "error received from server in SCRAM exchange: ";
    error.append(server_error ? *server_error : message);
    return false;
  }
  auto signature_b64 = r.attr('v');
  if (!signature_b64 || !r.at_end()) {
    error = "malformed SCRAM server-final-message";
    return false;
  }
  auto signature = base64_decode(*signature_b64);
  if (!signature || !equal_secret(*signature, expected_server_signature_)) {
    error = "incorrect server signature in SCRAM exchange";
    return false;
  }
  return true;
}

}  // namespace pgvalve::protocol
