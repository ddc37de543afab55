#include "proxy/users.h"

#include <openssl/rand.h>

#include <map>

namespace pgvalve::proxy {

UserDirectory::UserDirectory(config::ConfigPtr config, const UserDirectory* previous)
    : config_(std::move(config)) {
  for (const auto& user : config_->users) {
    UserAuth auth;
    auth.user = &user;
    if (protocol::is_scram_verifier(user.password)) {
      auth.verifier = protocol::ScramVerifier::parse(user.password);
    } else if (protocol::is_md5_hash(user.password)) {
      auth.method = AuthMethod::Md5;
      auth.md5_hash = user.password;
    } else {
      // Plain text: clients still get SCRAM, against a verifier made here.
      const protocol::ScramVerifier* reuse = nullptr;
      if (previous) {
        auto it = previous->derived_.find(user.name);
        if (it != previous->derived_.end() && it->second.first == user.password) {
          reuse = &it->second.second;
        }
      }
      if (reuse) {
        auth.verifier = *reuse;
      } else {
        std::string salt(16, '\0');
        RAND_bytes(reinterpret_cast<unsigned char*>(salt.data()), static_cast<int>(salt.size()));
        auth.verifier = protocol::ScramVerifier::from_password(user.password, salt);
      }
      derived_[user.name] = {user.password, *auth.verifier};
    }
    users_[user.name] = std::move(auth);
  }
  // What an unknown name is shown: the method most users have (SCRAM on a tie), and the
  // iteration count most SCRAM users have (the lowest on a tie).
  std::size_t md5 = 0;
  std::map<int, std::size_t> iterations;
  for (const auto& [name, auth] : users_) {
    if (auth.method == AuthMethod::Md5) ++md5;
    if (auth.verifier) ++iterations[auth.verifier->iterations];
  }
  if (md5 * 2 > users_.size()) unknown_method_ = AuthMethod::Md5;
  std::size_t most = 0;
  for (const auto& [count, users] : iterations) {
    if (users > most) {
      most = users;
      unknown_iterations_ = count;
    }
  }
}

UserAuth UserDirectory::unknown(std::string_view name) const {
  static const std::string secret = [] {
    std::string s(32, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(s.size()));
    return s;
  }();
  UserAuth auth;
  auth.method = unknown_method_;
  if (auth.method == AuthMethod::Md5) {
    // A hash of a password no one knows: the client's response never matches.
    auth.md5_hash = protocol::md5_password_hash(name, protocol::hmac_sha256(secret, name));
    return auth;
  }
  auth.verifier = protocol::mock_scram_verifier(secret, name);
  auth.verifier->iterations = unknown_iterations_;
  return auth;
}

const UserAuth* UserDirectory::find(std::string_view name) const {
  auto it = users_.find(std::string(name));
  return it == users_.end() ? nullptr : &it->second;
}

}  // namespace pgvalve::proxy
