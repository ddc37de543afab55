// Password authentication math: md5 and SCRAM-SHA-256 (RFC 5802 / RFC 7677, no channel
// binding) in both roles. Pure: nonces and salts come from the caller.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace pgvalve::protocol {

std::string base64_encode(std::string_view raw);
std::optional<std::string> base64_decode(std::string_view text);

// HMAC-SHA-256 (RFC 2104): 32 raw bytes. SCRAM's building block, public for its tests.
std::string hmac_sha256(std::string_view key, std::string_view data);

// ---- md5 ----------------------------------------------------------------------------------

// "md5" + hex(md5(password + user)): what pg_authid stores.
std::string md5_password_hash(std::string_view user, std::string_view password);
// What the client sends for salt `salt4`, given the stored hash ("md5..." as above):
// "md5" + hex(md5(hex_part + salt)).
std::string md5_salted_response(std::string_view stored_hash, std::string_view salt4);
// As PostgreSQL's get_password_type: "md5" and 32 lower-case hex digits. Anything else is a
// plain password there, and an upper-case hash could never match a client's response here.
inline bool is_md5_hash(std::string_view s) {
  if (s.size() != 35 || s.substr(0, 3) != "md5") return false;
  for (char c : s.substr(3)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// ---- SCRAM-SHA-256 -------------------------------------------------------------------------

inline constexpr std::string_view kScramSha256 = "SCRAM-SHA-256";
inline constexpr int kDefaultScramIterations = 4096;
// The most PBKDF2 iterations pgvalve runs for a server's SCRAM salt: more would let a server (or
// whoever answers in its place) make each login cost pgvalve seconds of CPU.
inline constexpr int kMaxScramIterations = 1'000'000;

// "SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>", as in pg_authid.
struct ScramVerifier {
  int iterations = kDefaultScramIterations;
  std::string salt;        // raw bytes
  std::string stored_key;  // raw 32 bytes
  std::string server_key;  // raw 32 bytes

  static std::optional<ScramVerifier> parse(std::string_view text);
  static ScramVerifier from_password(std::string_view password, std::string_view salt,
                                     int iterations = kDefaultScramIterations);
  std::string to_string() const;
};
inline bool is_scram_verifier(std::string_view s) {
  return s.starts_with("SCRAM-SHA-256$");
}

// The verifier of a user that does not exist: derived from `secret` (random per process) and the
// name, so one name always gets the same salt. A login as an unknown user then goes through the
// same SCRAM exchange as a real one and fails at the proof with the same error, so user names
// cannot be probed (PostgreSQL's scram_mock_salt does the same).
ScramVerifier mock_scram_verifier(std::string_view secret, std::string_view user);

// RFC 4013 SASLprep of a password, as PostgreSQL's pg_saslprep: ASCII passwords and ones that
// are not valid UTF-8 or contain prohibited characters are used as they are; others are
// normalised (NFKC, soft hyphens and the like dropped, non-ASCII spaces mapped to ' ').
std::string saslprep(std::string_view password);

// Equality in time that depends only on the sizes.
bool equal_secret(std::string_view a, std::string_view b);

// Server role: pgvalve checks a client's proof against a verifier.
class ScramServer {
 public:
  // `server_nonce` is the raw random part pgvalve adds (it is base64-encoded on the wire).
  ScramServer(ScramVerifier verifier, std::string_view server_nonce);
  // As above, but `server_nonce_text` is used on the wire as is (printable, no ','): for test
  // vectors such as RFC 7677's, whose nonces are given in their encoded form.
  static ScramServer with_encoded_nonce(ScramVerifier verifier, std::string_view server_nonce_text);

  // client-first-message -> server-first-message. nullopt + `error` on malformed input or a
  // channel-binding request.
  std::optional<std::string> handle_client_first(std::string_view message, std::string& error);
  // client-final-message -> server-final-message ("v=..."). nullopt + `error` when the proof is
  // wrong (error then says so) or the message is malformed.
  std::optional<std::string> handle_client_final(std::string_view message, std::string& error);

 private:
  ScramVerifier verifier_;
  std::string server_nonce_b64_;
  std::string client_first_bare_;
  std::string server_first_;
  std::string combined_nonce_;
  char cbind_flag_ = 0;  // 'n' or 'y' from the client-first-message; c= must repeat it
};

// Client role: pgvalve logs in to PostgreSQL with a password.
class ScramClient {
 public:
  ScramClient(std::string_view password, std::string_view client_nonce_raw);
  // As above, but `client_nonce_text` is used on the wire as is (printable, no ','), and `user`
  // goes into n= (PostgreSQL ignores it and libpq sends it empty; test vectors such as
  // RFC 7677's include it, and it is part of the signed AuthMessage).
  static ScramClient with_encoded_nonce(std::string_view password,
                                        std::string_view client_nonce_text,
                                        std::string_view user = {});

  std::string client_first() const;  // "n,,n=,r=<nonce>"
  // server-first-message -> client-final-message.
  std::optional<std::string> handle_server_first(std::string_view message, std::string& error);
  // Checks the server's signature: false + `error` when it does not prove knowledge of the key.
  bool verify_server_final(std::string_view message, std::string& error) const;

 private:
  std::string password_;
  std::string client_nonce_b64_;
  std::string client_first_bare_;
  std::string expected_server_signature_;
};

}  // namespace pgvalve::protocol
