// The users clients may log in as, with what pgvalve needs to check them: a SCRAM verifier
// (derived once from a plain-text password) or an md5 hash.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "config/config.h"
#include "protocol/auth.h"

namespace pgvalve::proxy {

enum class AuthMethod { Scram, Md5 };

struct UserAuth {
  const config::User* user = nullptr;  // owned by the Config this directory was built from
  AuthMethod method = AuthMethod::Scram;
  std::optional<protocol::ScramVerifier> verifier;
  std::string md5_hash;  // "md5..." for AuthMethod::Md5
};

class UserDirectory {
 public:
  // `previous` lets a reload keep verifiers of unchanged plain-text passwords (deriving one
  // costs a PBKDF2 run).
  UserDirectory(config::ConfigPtr config, const UserDirectory* previous);
  const UserAuth* find(std::string_view name) const;
  // For a name find() does not know: a SCRAM login that fails only at the proof
  // (protocol::mock_scram_verifier under a secret drawn once per process).
  static UserAuth unknown(std::string_view name);

 private:
  config::ConfigPtr config_;
  std::unordered_map<std::string, UserAuth> users_;
  std::unordered_map<std::string, std::pair<std::string, protocol::ScramVerifier>> derived_;
};

}  // namespace pgvalve::proxy
