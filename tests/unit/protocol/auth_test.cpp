#include "protocol/auth.h"

#include <gtest/gtest.h>

#include <string>

namespace pgvalve::protocol {
namespace {

using namespace std::string_literals;

std::string hex(std::string_view raw) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xf]);
  }
  return out;
}

// ---- HMAC-SHA-256 --------------------------------------------------------------------------

TEST(HmacSha256, Rfc4231Vectors) {
  EXPECT_EQ(hex(hmac_sha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(hex(hmac_sha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // Keys longer than SHA-256's 64-byte block are hashed first.
  const std::string long_key(131, '\xaa');
  EXPECT_EQ(hex(hmac_sha256(long_key, "Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  EXPECT_EQ(hex(hmac_sha256(long_key,
                            "This is a test using a larger than block-size key and a larger than "
                            "block-size data. The key needs to be hashed before being used by the "
                            "HMAC algorithm.")),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

TEST(HmacSha256, KeyOfExactlyOneBlockAndEmptyInputs) {
  // 64 bytes is used as it is, 65 is hashed: the two give different MACs.
  EXPECT_NE(hmac_sha256(std::string(64, 'k'), "m"), hmac_sha256(std::string(65, 'k'), "m"));
  EXPECT_EQ(hex(hmac_sha256("", "")),
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

// ---- base64 --------------------------------------------------------------------------------

TEST(Base64, Rfc4648Vectors) {
  const std::pair<std::string, std::string> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [raw, text] : vectors) {
    EXPECT_EQ(base64_encode(raw), text);
    EXPECT_EQ(base64_decode(text), raw);
  }
}

TEST(Base64, AllByteValuesRoundTrip) {
  std::string raw;
  for (int i = 0; i < 256; ++i)
    raw.push_back(static_cast<char>(i));
  for (std::size_t n = 0; n <= raw.size(); n += 37) {
    EXPECT_EQ(base64_decode(base64_encode(raw.substr(0, n))), raw.substr(0, n));
  }
  EXPECT_EQ(base64_encode("\xfb\xff"s), "+/8=");
}

TEST(Base64, RejectsMalformed) {
  for (const char* text : {"Zg=", "Z", "Z===", "====", "Zh==", "Zm9=", "Zm9v!A==", "Zg==Zm9v",
                           "Zm=v", "Zm9v\n", " Zm9v"}) {
    EXPECT_FALSE(base64_decode(text)) << text;
  }
}

// ---- md5 -----------------------------------------------------------------------------------

// Both hashes are what PostgreSQL 15 stored in pg_authid with password_encryption = md5.
TEST(Md5, PasswordHashMatchesPostgres) {
  EXPECT_EQ(md5_password_hash("postgres", "postgres"), "md53175bce1d3201d16594cebf9d7eb3f9d");
  EXPECT_EQ(md5_password_hash("postgres_md5test", "secret"), "md593a5d3bb7f5b981773e4f6266357523a");
  EXPECT_TRUE(is_md5_hash(md5_password_hash("u", "p")));
  EXPECT_FALSE(is_md5_hash("md5abc"));
}

// Recorded from PostgreSQL 15 (pg_hba method md5): the salt it sent and the response it accepted
// for role postgres_md5test, password "secret".
TEST(Md5, SaltedResponseAcceptedByPostgres) {
  EXPECT_EQ(md5_salted_response(md5_password_hash("postgres_md5test", "secret"), "\xb7}d\xb3"s),
            "md592c3c5442eac69c14ceced9a6c6de63e");
}

TEST(Md5, SaltedResponse) {
  // "md5" + md5(hex_part + salt), as libpq computes it.
  EXPECT_EQ(md5_salted_response("md53175bce1d3201d16594cebf9d7eb3f9d", "\x01\x02\x03\x04"),
            "md568be9ed08db75f318087ab337aaea044");
}

// ---- SCRAM verifier --------------------------------------------------------------------------

// What PostgreSQL 15 stored for CREATE ROLE x PASSWORD 'secret' (password_encryption =
// scram-sha-256).
constexpr std::string_view kPgVerifierSecret =
    "SCRAM-SHA-256$4096:3WPXWXNy0nUKIsEYeyVd1w==$MJVcrp+ABhCN/5Pq0hs+wp7TcXhws63UdZgc+Us6VSM=:"
    "6ttVKsLiicZXPskDYJ5CIy3H5yR04VscpQ7MRvR/lO8=";
// ... and for PASSWORD 'pencil'.
constexpr std::string_view kPgVerifierPencil =
    "SCRAM-SHA-256$4096:3++a0uiiLMAhosOf69rFrQ==$/5MN8WuhecdboahC9EwARLYx19g2HPk5FaZ+9t5FUI0=:"
    "QvXAuYCSrAZsg0JWXeyfoUW4Z8JjdN14KU9TVvPsZmU=";

TEST(ScramVerifier, ParsesPostgresVerifier) {
  auto v = ScramVerifier::parse(kPgVerifierSecret);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->iterations, 4096);
  EXPECT_EQ(v->salt, base64_decode("3WPXWXNy0nUKIsEYeyVd1w=="));
  EXPECT_EQ(v->stored_key.size(), 32u);
  EXPECT_EQ(v->server_key.size(), 32u);
  EXPECT_EQ(v->to_string(), kPgVerifierSecret);
}

TEST(ScramVerifier, FromPasswordMatchesPostgresByteExact) {
  for (auto [password, text] :
       {std::pair{"secret", kPgVerifierSecret}, std::pair{"pencil", kPgVerifierPencil}}) {
    auto parsed = ScramVerifier::parse(text);
    ASSERT_TRUE(parsed);
    const ScramVerifier v = ScramVerifier::from_password(password, parsed->salt, 4096);
    EXPECT_EQ(v.to_string(), text) << password;
    EXPECT_EQ(v.stored_key, parsed->stored_key);
    EXPECT_EQ(v.server_key, parsed->server_key);
  }
}

TEST(ScramVerifier, RejectsMalformed) {
  const std::string key = "MJVcrp+ABhCN/5Pq0hs+wp7TcXhws63UdZgc+Us6VSM=";
  const std::string good = "SCRAM-SHA-256$4096:c2FsdA==$" + key + ":" + key;
  ASSERT_TRUE(ScramVerifier::parse(good));
  for (const std::string& bad : {
           "md53175bce1d3201d16594cebf9d7eb3f9d"s,
           "SCRAM-SHA-1$4096:c2FsdA==$" + key + ":" + key,
           "SCRAM-SHA-256$0:c2FsdA==$" + key + ":" + key,
           "SCRAM-SHA-256$-1:c2FsdA==$" + key + ":" + key,
           "SCRAM-SHA-256$abc:c2FsdA==$" + key + ":" + key,
           "SCRAM-SHA-256$99999999999:c2FsdA==$" + key + ":" + key,
           "SCRAM-SHA-256$4096:$" + key + ":" + key,         // empty salt
           "SCRAM-SHA-256$4096:c2Fsd$" + key + ":" + key,    // bad base64
           "SCRAM-SHA-256$4096:c2FsdA==$c2FsdA==:" + key,    // short StoredKey
           "SCRAM-SHA-256$4096:c2FsdA==$" + key,             // no ServerKey
           "SCRAM-SHA-256$4096c2FsdA==$" + key + ":" + key,  // no ':'
           "SCRAM-SHA-256$4096:c2FsdA==$" + key + ":" + key + "x",
       }) {
    EXPECT_FALSE(ScramVerifier::parse(bad)) << bad;
  }
}

// ---- SCRAM exchange: RFC 7677 section 3 --------------------------------------------------------

constexpr std::string_view kRfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

ScramVerifier rfc_verifier() {
  return ScramVerifier::from_password("pencil", *base64_decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096);
}

TEST(Scram, Rfc7677ClientRole) {
  ScramClient client = ScramClient::with_encoded_nonce("pencil", "rOprNGfwEbeRWgbNEkqO", "user");
  EXPECT_EQ(client.client_first(), kRfcClientFirst);
  std::string error;
  auto final_message = client.handle_server_first(kRfcServerFirst, error);
  ASSERT_TRUE(final_message) << error;
  EXPECT_EQ(*final_message, kRfcClientFinal);
  EXPECT_TRUE(client.verify_server_final(kRfcServerFinal, error)) << error;
}

TEST(Scram, Rfc7677ServerRole) {
  ScramServer server =
      ScramServer::with_encoded_nonce(rfc_verifier(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
  std::string error;
  auto server_first = server.handle_client_first(kRfcClientFirst, error);
  ASSERT_TRUE(server_first) << error;
  EXPECT_EQ(*server_first, kRfcServerFirst);
  auto server_final = server.handle_client_final(kRfcClientFinal, error);
  ASSERT_TRUE(server_final) << error;
  EXPECT_EQ(*server_final, kRfcServerFinal);
}

TEST(Scram, RawNoncesAreBase64Encoded) {
  ScramClient client("pw", "\x01\x02\x03\xff"s);
  EXPECT_EQ(client.client_first(), "n,,n=,r=AQID/w==");
  ScramServer server(ScramVerifier::from_password("pw", "salt", 16), "\xfb\xff"s);
  std::string error;
  auto first = server.handle_client_first(client.client_first(), error);
  ASSERT_TRUE(first) << error;
  EXPECT_EQ(*first, "r=AQID/w==+/8=,s=c2FsdA==,i=16");
}

TEST(Scram, SaslNameIsEscaped) {
  ScramClient client = ScramClient::with_encoded_nonce("pw", "abc", "a,b=c");
  EXPECT_EQ(client.client_first(), "n,,n=a=2Cb=3Dc,r=abc");
}

// A login recorded against PostgreSQL 15: role x, password "secret" (kPgVerifierSecret), client
// nonce "pgvalve-live-nonce-1". The server-first and server-final messages are PostgreSQL's.
constexpr std::string_view kPgClientFirst = "n,,n=,r=cGd2YWx2ZS1saXZlLW5vbmNlLTE=";
constexpr std::string_view kPgServerFirst =
    "r=cGd2YWx2ZS1saXZlLW5vbmNlLTE=B/UyTYnM6SMxJE3swrnsb4HT,s=3WPXWXNy0nUKIsEYeyVd1w==,i=4096";
constexpr std::string_view kPgClientFinal =
    "c=biws,r=cGd2YWx2ZS1saXZlLW5vbmNlLTE=B/UyTYnM6SMxJE3swrnsb4HT,"
    "p=1y2WM9CEw1/KRA2XsyZMrTkGPLUTqmk522a5Zyaoox8=";
constexpr std::string_view kPgServerFinal = "v=q8V7h90+R2ISk04DiKAXgwUVnT8WAY+MDtbVX4D0/R4=";

TEST(Scram, PostgresTranscriptClientRole) {
  ScramClient client("secret", "pgvalve-live-nonce-1");
  EXPECT_EQ(client.client_first(), kPgClientFirst);
  std::string error;
  auto final_message = client.handle_server_first(kPgServerFirst, error);
  ASSERT_TRUE(final_message) << error;
  EXPECT_EQ(*final_message, kPgClientFinal);
  EXPECT_TRUE(client.verify_server_final(kPgServerFinal, error)) << error;
}

TEST(Scram, PostgresTranscriptServerRole) {
  // PostgreSQL's server nonce is base64 of 18 random bytes; give ours the same bytes.
  ScramServer server(*ScramVerifier::parse(kPgVerifierSecret),
                     *base64_decode("B/UyTYnM6SMxJE3swrnsb4HT"));
  std::string error;
  auto server_first = server.handle_client_first(kPgClientFirst, error);
  ASSERT_TRUE(server_first) << error;
  EXPECT_EQ(*server_first, kPgServerFirst);
  auto server_final = server.handle_client_final(kPgClientFinal, error);
  ASSERT_TRUE(server_final) << error;
  EXPECT_EQ(*server_final, kPgServerFinal);
}

// Runs a whole exchange between our two roles.
struct Exchange {
  bool client_final_ok = false;
  bool server_accepted = false;
  bool client_verified = false;
  std::string error;
};
Exchange run_exchange(std::string_view client_password, const ScramVerifier& verifier) {
  Exchange e;
  ScramClient client(client_password, "client-nonce-bytes");
  ScramServer server(verifier, "server-nonce-bytes");
  auto server_first = server.handle_client_first(client.client_first(), e.error);
  if (!server_first) return e;
  auto client_final = client.handle_server_first(*server_first, e.error);
  e.client_final_ok = client_final.has_value();
  if (!client_final) return e;
  auto server_final = server.handle_client_final(*client_final, e.error);
  e.server_accepted = server_final.has_value();
  if (!server_final) return e;
  e.client_verified = client.verify_server_final(*server_final, e.error);
  return e;
}

TEST(Scram, OwnRolesAgree) {
  Exchange e = run_exchange("secret", *ScramVerifier::parse(kPgVerifierSecret));
  EXPECT_TRUE(e.server_accepted) << e.error;
  EXPECT_TRUE(e.client_verified) << e.error;
  // An empty password is just another password to SCRAM.
  e = run_exchange("", ScramVerifier::from_password("", "salt", 64));
  EXPECT_TRUE(e.client_verified) << e.error;
}

TEST(Scram, WrongPasswordRefused) {
  Exchange e = run_exchange("secreT", *ScramVerifier::parse(kPgVerifierSecret));
  EXPECT_TRUE(e.client_final_ok);
  EXPECT_FALSE(e.server_accepted);
  EXPECT_NE(e.error.find("password authentication failed"), std::string::npos) << e.error;
}

// ---- SCRAM server: what clients may get wrong --------------------------------------------------

std::string first_error(std::string_view client_first) {
  ScramServer server(rfc_verifier(), "n");
  std::string error;
  EXPECT_FALSE(server.handle_client_first(client_first, error)) << client_first;
  return error;
}

TEST(ScramServer, RefusesChannelBinding) {
  const std::string error = first_error("p=tls-server-end-point,,n=,r=abc");
  EXPECT_NE(error.find("channel binding"), std::string::npos) << error;
}

TEST(ScramServer, RefusesMalformedClientFirst) {
  EXPECT_NE(first_error("n,a=admin,n=,r=abc").find("authorization identity"), std::string::npos);
  EXPECT_NE(first_error("n,,m=ext,n=,r=abc").find("extension"), std::string::npos);
  for (std::string_view bad : {"", "n", "n,", "n,,", "x,,n=,r=abc", "n,,r=abc", "n,,n=", "n,,n=,",
                               "n,,n=,r=", "n,,n=,r=abc,",
                               "n,,n=,r=a\x01"
                               "c",
                               "n,,n=,r=abc,junk", "n,,n=,r=abc,=x"}) {
    EXPECT_FALSE(first_error(bad).empty()) << bad;
  }
}

TEST(ScramServer, IgnoresUserNameAndExtensions) {
  ScramServer server(rfc_verifier(), "n");
  std::string error;
  EXPECT_TRUE(server.handle_client_first("n,,n=whoever,r=abc,x=ext", error)) << error;
}

TEST(ScramServer, AcceptsYFlagAndRequiresItInFinal) {
  const ScramVerifier v = rfc_verifier();
  // A client that supports channel binding but thinks we do not sends 'y'.
  ScramClient client = ScramClient::with_encoded_nonce("pencil", "cnonce");
  ScramServer server = ScramServer::with_encoded_nonce(v, "snonce");
  std::string error;
  auto first = server.handle_client_first("y,,n=,r=cnonce", error);
  ASSERT_TRUE(first) << error;
  // Our client writes c=biws ("n,,"), which does not match the 'y' sent first.
  auto final_message = client.handle_server_first(*first, error);
  ASSERT_TRUE(final_message) << error;
  EXPECT_FALSE(server.handle_client_final(*final_message, error));
  EXPECT_NE(error.find("channel-binding"), std::string::npos) << error;
}

TEST(ScramServer, RefusesMalformedClientFinal) {
  const std::string nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
  const std::string proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
  for (const std::string& bad : {
           ""s, "c=biws"s,
           "c=biws,r=" + nonce,                       // no proof
           "c=biws,r=" + nonce + "x," + proof,        // nonce mismatch
           "c=biws,r=rOprNGfwEbeRWgbNEkqO," + proof,  // client nonce only
           "c=eSws,r=" + nonce + "," + proof,         // flag mismatch
           "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=" + nonce + "," + proof,
           "c=biws,r=" + nonce + "," + proof + ",x=1",  // proof not last
           "c=biws,r=" + nonce + "," + proof + ",",
           "c=biws,r=" + nonce + ",p=AAAA",    // proof too short
           "c=biws,r=" + nonce + ",p=!!!!",    // proof not base64
           "r=" + nonce + ",c=biws," + proof,  // order
       }) {
    ScramServer server =
        ScramServer::with_encoded_nonce(rfc_verifier(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    std::string error;
    ASSERT_TRUE(server.handle_client_first(kRfcClientFirst, error)) << error;
    EXPECT_FALSE(server.handle_client_final(bad, error)) << bad;
    EXPECT_FALSE(error.empty());
  }
}

TEST(ScramServer, ExtensionBeforeProofIsSigned) {
  // Attributes between r= and p= are allowed (PostgreSQL skips them) but are part of the
  // signed message, so the RFC proof no longer matches.
  ScramServer server =
      ScramServer::with_encoded_nonce(rfc_verifier(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
  std::string error;
  ASSERT_TRUE(server.handle_client_first(kRfcClientFirst, error));
  EXPECT_FALSE(
      server.handle_client_final("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,x=1,"
                                 "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                                 error));
  EXPECT_NE(error.find("password authentication failed"), std::string::npos) << error;
}

TEST(ScramServer, OutOfOrderCalls) {
  ScramServer server = ScramServer::with_encoded_nonce(rfc_verifier(), "x");
  std::string error;
  EXPECT_FALSE(server.handle_client_final(kRfcClientFinal, error));
  ASSERT_TRUE(server.handle_client_first(kRfcClientFirst, error));
  EXPECT_FALSE(server.handle_client_first(kRfcClientFirst, error));
}

// ---- Unknown users: a mock verifier ---------------------------------------------------------

TEST(MockScramVerifier, StablePerNameDifferentBetweenNamesAndSecrets) {
  const auto a1 = mock_scram_verifier("secret-1", "alice");
  const auto a2 = mock_scram_verifier("secret-1", "alice");
  const auto b = mock_scram_verifier("secret-1", "bob");
  const auto a_other = mock_scram_verifier("secret-2", "alice");
  EXPECT_EQ(a1.to_string(), a2.to_string());  // the same salt every time: no tell
  EXPECT_NE(a1.salt, b.salt);
  EXPECT_NE(a1.salt, a_other.salt);
  EXPECT_EQ(a1.iterations, kDefaultScramIterations);
  EXPECT_EQ(a1.salt.size(), 16u);
  EXPECT_EQ(a1.stored_key.size(), 32u);
  EXPECT_EQ(a1.server_key.size(), 32u);
  EXPECT_TRUE(ScramVerifier::parse(a1.to_string()).has_value());
}

TEST(MockScramVerifier, TheExchangeRunsAndFailsAtTheProof) {
  ScramServer server(mock_scram_verifier("secret", "nobody"), "server-nonce-bytes");
  ScramClient client("any password", "client-nonce");
  std::string error;
  const auto server_first = server.handle_client_first(client.client_first(), error);
  ASSERT_TRUE(server_first) << error;
  const auto client_final = client.handle_server_first(*server_first, error);
  ASSERT_TRUE(client_final) << error;
  EXPECT_FALSE(server.handle_client_final(*client_final, error));
}

TEST(EqualSecret, ComparesWholeValues) {
  EXPECT_TRUE(equal_secret("md5abc", "md5abc"));
  EXPECT_FALSE(equal_secret("md5abc", "md5abd"));
  EXPECT_FALSE(equal_secret("md5abc", "md5ab"));
  EXPECT_TRUE(equal_secret("", ""));
}

// ---- SCRAM client: what a server may get wrong -------------------------------------------------

TEST(ScramClient, RefusesBadServerFirst) {
  const std::string salt = "s=W22ZaJ0SNY7soEsUEjb6gQ==";
  for (const std::string& bad : {
           ""s,
           "r=rOprNGfwEbeRWgbNEkqO," + salt + ",i=4096",     // server added no nonce
           "r=XOprNGfwEbeRWgbNEkqOxyz," + salt + ",i=4096",  // not our nonce
           "r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096"s,           // empty salt
           "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22,i=4096"s,        // bad base64
           "r=rOprNGfwEbeRWgbNEkqOxyz," + salt + ",i=0",
           "r=rOprNGfwEbeRWgbNEkqOxyz," + salt + ",i=-5",
           "r=rOprNGfwEbeRWgbNEkqOxyz," + salt + ",i=4k",
           "r=rOprNGfwEbeRWgbNEkqOxyz," + salt,
           "r=rOprNGfwEbeRWgbNEkqOxyz," + salt + ",i=4096,",
           "r=rOprNGfwEbeRWgbNEkqOxyz," + salt + ",i=4096,x=1",
           "m=ext,r=rOprNGfwEbeRWgbNEkqOxyz," + salt + ",i=4096",
           salt + ",r=rOprNGfwEbeRWgbNEkqOxyz,i=4096",
           // a salt that would cost pgvalve seconds of PBKDF2 per login
           "r=rOprNGfwEbeRWgbNEkqOxyz," + salt + ",i=1000001",
           "r=rOprNGfwEbeRWgbNEkqOxyz," + salt + ",i=2147483647",
       }) {
    ScramClient client = ScramClient::with_encoded_nonce("pencil", "rOprNGfwEbeRWgbNEkqO");
    std::string error;
    EXPECT_FALSE(client.handle_server_first(bad, error)) << bad;
    EXPECT_FALSE(error.empty()) << bad;
  }
}

TEST(ScramClient, RefusesBadServerFinal) {
  std::string error;
  ScramClient client = ScramClient::with_encoded_nonce("pencil", "rOprNGfwEbeRWgbNEkqO", "user");
  EXPECT_FALSE(client.verify_server_final(kRfcServerFinal, error));  // before server-first
  ASSERT_TRUE(client.handle_server_first(kRfcServerFirst, error)) << error;

  EXPECT_FALSE(client.verify_server_final("e=invalid-proof", error));
  EXPECT_NE(error.find("invalid-proof"), std::string::npos) << error;
  EXPECT_FALSE(client.verify_server_final("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", error));
  EXPECT_NE(error.find("signature"), std::string::npos) << error;
  EXPECT_FALSE(client.verify_server_final("v=AAAA", error));
  EXPECT_FALSE(client.verify_server_final("", error));
  EXPECT_FALSE(client.verify_server_final(std::string(kRfcServerFinal) + ",", error));
  EXPECT_TRUE(client.verify_server_final(kRfcServerFinal, error)) << error;
}

}  // namespace
}  // namespace pgvalve::protocol

namespace pgvalve::protocol {
namespace {

// RFC 4013 §3's examples, and what PostgreSQL's pg_saslprep does with what SASLprep refuses.
TEST(Saslprep, NormalisesAsRfc4013) {
  EXPECT_EQ(saslprep("I\xC2\xAD"
                     "X"),
            "IX");                            // SOFT HYPHEN mapped to nothing
  EXPECT_EQ(saslprep("user"), "user");        // ASCII: unchanged
  EXPECT_EQ(saslprep("USER"), "USER");        // case is kept
  EXPECT_EQ(saslprep("\xC2\xAA"), "a");       // FEMININE ORDINAL, NFKC
  EXPECT_EQ(saslprep("\xE2\x85\xA8"), "IX");  // ROMAN NUMERAL NINE, NFKC
  EXPECT_EQ(saslprep("a\xC2\xA0"
                     "b"),
            "a b");                                    // NO-BREAK SPACE mapped to SPACE
  EXPECT_EQ(saslprep("p\xC3\xA4ss"), "p\xC3\xA4ss");   // already NFKC
  EXPECT_EQ(saslprep("pa\xCC\x88ss"), "p\xC3\xA4ss");  // a + COMBINING DIAERESIS composed
}

TEST(Saslprep, WhatItRefusesIsUsedAsItIs) {
  EXPECT_EQ(saslprep("\x07"
                     "\xC3\xA4"),
            "\x07"
            "\xC3\xA4");  // prohibited control character
  EXPECT_EQ(saslprep("\xD8\xA7"
                     "1"),
            "\xD8\xA7"
            "1");                               // bidi rule (RandALCat then L)
  EXPECT_EQ(saslprep("\xFF\xFE"), "\xFF\xFE");  // not UTF-8
}

TEST(Saslprep, AVerifierFromAPasswordMatchesItsPreparedForm) {
  const auto raw = ScramVerifier::from_password(
      "I\xC2\xAD"
      "X",
      "salt-salt-salt");
  const auto prepared = ScramVerifier::from_password("IX", "salt-salt-salt");
  EXPECT_EQ(raw.to_string(), prepared.to_string());
}

}  // namespace
}  // namespace pgvalve::protocol
