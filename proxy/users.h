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
  // For a name find() does not know: a login that fails only at the proof, by the method most
  // configured users have (md5, or SCRAM with their most common iteration count), so that
  // neither the method nor the iteration count tells an unknown name from a configured one
  // (protocol::mock_scram_verifier under a secret drawn once per process).
  UserAuth unknown(std::string_view name) const;

 private:
  config::ConfigPtr config_;
  AuthMethod unknown_method_ = AuthMethod::Scram;
  int unknown_iterations_ = protocol::kDefaultScramIterations;
  std::unordered_map<std::string, UserAuth> users_;
  std::unordered_map<std::string, std::pair<std::string, protocol::ScramVerifier>> derived_;
};

}  // namespace pgvalve::proxy
