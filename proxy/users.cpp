#include "proxy/users.h"

#include <openssl/rand.h>

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
}

UserAuth UserDirectory::unknown(std::string_view name) {
  static const std::string secret = [] {
    std::string s(32, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(s.size()));
    return s;
  }();
  UserAuth auth;
  auth.verifier = protocol::mock_scram_verifier(secret, name);
  return auth;
}

const UserAuth* UserDirectory::find(std::string_view name) const {
  auto it = users_.find(std::string(name));
  return it == users_.end() ? nullptr : &it->second;
}

}  // namespace pgvalve::proxy
