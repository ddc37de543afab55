#include "proxy/tls.h"

#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <climits>

namespace pgvalve::proxy {

namespace {

std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown TLS error" : out;
}

std::string describe_certificate(SSL_CTX* ctx) {
  X509* cert = SSL_CTX_get0_certificate(ctx);
  if (!cert) return "";
  char subject[256] = {};
  X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof subject);
  std::string out = subject;
  if (BIO* b = BIO_new(BIO_s_mem())) {
    if (ASN1_TIME_print(b, X509_get0_notAfter(cert)) == 1) {
      char* data = nullptr;
      const long n = BIO_get_mem_data(b, &data);
      out += ", expires " + std::string(data, static_cast<std::size_t>(n));
    }
    BIO_free(b);
  }
  return out;
}

// What both sides share: TLS 1.2 and later, no renegotiation, compression or tickets, and no
// read or write buffer kept inside OpenSSL while a peer is idle. Null (and `error`) on failure.
SSL_CTX* new_context(const SSL_METHOD* method, std::string& error) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(method);
  if (!ctx) {
    error = openssl_errors();
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE);
  return ctx;
}

// OpenSSL's default for an encrypted key asks for its passphrase on the terminal: at start and
// at every SIGHUP or RELOAD, blocking the thread that reloads (and without a terminal the error
// was only OpenSSL's). pgvalve gives none, and notes that one was asked for.
int no_passphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* asked) {
  if (asked) *static_cast<bool*>(asked) = true;
  return 0;
}

}  // namespace

std::shared_ptr<const TlsServerContext> TlsServerContext::make(const config::TlsConfig& tls,
                                                               std::string& error) {
  std::shared_ptr<TlsServerContext> c(new TlsServerContext());
  c->mode_ = tls.mode;
  c->ctx_ = new_context(TLS_server_method(), error);
  if (!c->ctx_) return nullptr;
  SSL_CTX_set_options(c->ctx_, SSL_OP_CIPHER_SERVER_PREFERENCE);
  // No resumption: a server-side session cache (20,480 sessions by default) would be memory
  // that clients fill, and TLS 1.3 tickets would fill it too.
  SSL_CTX_set_session_cache_mode(c->ctx_, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(c->ctx_, 0);
  bool passphrase_asked = false;
  SSL_CTX_set_default_passwd_cb(c->ctx_, no_passphrase);
  SSL_CTX_set_default_passwd_cb_userdata(c->ctx_, &passphrase_asked);
  if (SSL_CTX_use_certificate_chain_file(c->ctx_, tls.cert.c_str()) != 1) {
    error = "tls.cert " + tls.cert + ": " + openssl_errors();
    return nullptr;
  }
  const bool key_used =
      SSL_CTX_use_PrivateKey_file(c->ctx_, tls.key.c_str(), SSL_FILETYPE_PEM) == 1;
  SSL_CTX_set_default_passwd_cb_userdata(c->ctx_, nullptr);  // the flag ends here
  if (!key_used && passphrase_asked) {
    ERR_clear_error();
    error = "tls.key " + tls.key +
            " is encrypted with a passphrase, which pgvalve does not ask for; give it the key "
            "without one (openssl pkey -in " +
            tls.key + " -out <new file>), readable only by pgvalve's user";
    return nullptr;
  }
  if (!key_used) {
    error = "tls.key " + tls.key + ": " + openssl_errors();
    return nullptr;
  }
  if (SSL_CTX_check_private_key(c->ctx_) != 1) {
    error = "tls.key " + tls.key + " does not match tls.cert " + tls.cert;
    return nullptr;
  }
  if (!tls.client_ca.empty()) {
    if (SSL_CTX_load_verify_locations(c->ctx_, tls.client_ca.c_str(), nullptr) != 1) {
      error = "tls.client_ca " + tls.client_ca + ": " + openssl_errors();
      return nullptr;
    }
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(tls.client_ca.c_str());
    if (names) SSL_CTX_set_client_CA_list(c->ctx_, names);
    SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  c->description_ = describe_certificate(c->ctx_);
  return c;
}

TlsServerContext::~TlsServerContext() {
  if (ctx_) SSL_CTX_free(ctx_);
}

std::shared_ptr<const TlsClientContext> TlsClientContext::make(config::ServerTlsMode mode,
                                                               const std::string& ca_file,
                                                               std::string& error) {
  std::shared_ptr<TlsClientContext> c(new TlsClientContext());
  c->mode_ = mode;
  c->ctx_ = new_context(TLS_client_method(), error);
  if (!c->ctx_) return nullptr;
  const bool verify =
      mode == config::ServerTlsMode::VerifyCa || mode == config::ServerTlsMode::VerifyFull;
  if (verify) {
    const int loaded = ca_file.empty()
                           ? SSL_CTX_set_default_verify_paths(c->ctx_)
                           : SSL_CTX_load_verify_locations(c->ctx_, ca_file.c_str(), nullptr);
    if (loaded != 1) {
      error = (ca_file.empty() ? std::string("the system's CA certificates")
                               : "server_tls_ca " + ca_file) +
              ": " + openssl_errors();
      return nullptr;
    }
    SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_NONE, nullptr);
  }
  return c;
}

TlsClientContext::~TlsClientContext() {
  if (ctx_) SSL_CTX_free(ctx_);
}

namespace {

BIO* memory_bio() {
  BIO* b = BIO_new(BIO_s_mem());
  // An empty input BIO means "no data yet", not end of file.
  if (b) BIO_set_mem_eof_return(b, -1);
  return b;
}

// What an empty memory BIO keeps allocated: BIO_reset keeps the buffer the largest flight grew.
std::size_t capacity(BIO* b) {
  BUF_MEM* memory = nullptr;
  BIO_get_mem_ptr(b, &memory);
  return memory ? memory->max : 0;
}

}  // namespace

void TlsChannel::open(SSL_CTX* ctx) {
  ssl_ = SSL_new(ctx);
  in_ = memory_bio();
  out_ = memory_bio();
  SSL_set_bio(ssl_, in_, out_);
}

void TlsChannel::trim() {
  if (!ssl_) return;
  if (BIO_ctrl_pending(in_) == 0 && capacity(in_) > kKeptBioBytes) {
    if (BIO* fresh = memory_bio()) {
      SSL_set0_rbio(ssl_, fresh);  // frees the old one
      in_ = fresh;
    }
  }
  if (BIO_ctrl_pending(out_) == 0 && capacity(out_) > kKeptBioBytes) {
    if (BIO* fresh = memory_bio()) {
      SSL_set0_wbio(ssl_, fresh);
      out_ = fresh;
    }
  }
}

TlsChannel::TlsChannel(std::shared_ptr<const TlsServerContext> context) : context_(context) {
  open(context->native());
  SSL_set_accept_state(ssl_);
}

TlsChannel::TlsChannel(std::shared_ptr<const TlsClientContext> context, const std::string& host)
    : context_(context) {
  open(context->native());
  SSL_set_connect_state(ssl_);
  ASN1_OCTET_STRING* ip = a2i_IPADDRESS(host.c_str());
  if (ip) {
    ASN1_OCTET_STRING_free(ip);
  } else {
    SSL_set_tlsext_host_name(ssl_, host.c_str());  // SNI takes names only
  }
  if (context->mode() == config::ServerTlsMode::VerifyFull) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
    if (X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) != 1) {
      X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      SSL_set1_host(ssl_, host.c_str());
    }
  }
}

TlsChannel::~TlsChannel() {
  SSL_free(ssl_);  // frees both BIOs
}

void TlsChannel::feed(std::span<const char> ciphertext) {
  if (!ciphertext.empty()) BIO_write(in_, ciphertext.data(), static_cast<int>(ciphertext.size()));
}

bool TlsChannel::buffered() const {
  return SSL_pending(ssl_) > 0 || BIO_ctrl_pending(in_) > 0;
}

TlsChannel::Status TlsChannel::fail(int ret) {
  switch (SSL_get_error(ssl_, ret)) {
    case SSL_ERROR_WANT_READ:
      return Status::WantInput;
    case SSL_ERROR_ZERO_RETURN:
      return Status::Closed;
    default:
      error_ = openssl_errors();
      if (long v = SSL_get_verify_result(ssl_); v != X509_V_OK) {
        error_ += std::string(" (certificate: ") + X509_verify_cert_error_string(v) + ")";
      }
      return Status::Failed;
  }
}

TlsChannel::Status TlsChannel::handshake() {
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_);
  return r == 1 ? Status::Ok : fail(r);
}

TlsChannel::Status TlsChannel::read(std::span<char> into, std::size_t& n) {
  n = 0;
  if (into.empty()) return Status::Ok;
  ERR_clear_error();
  const int want = static_cast<int>(std::min<std::size_t>(into.size(), INT_MAX));
  const int r = SSL_read(ssl_, into.data(), want);
  if (r > 0) {
    n = static_cast<std::size_t>(r);
    return Status::Ok;
  }
  return fail(r);
}

bool TlsChannel::write(std::string_view plaintext) {
  ERR_clear_error();
  while (!plaintext.empty()) {
    const int chunk = static_cast<int>(std::min<std::size_t>(plaintext.size(), 1 << 30));
    const int r = SSL_write(ssl_, plaintext.data(), chunk);
    if (r <= 0) {
      fail(r);
      return false;
    }
    plaintext.remove_prefix(static_cast<std::size_t>(r));
  }
  return true;
}

void TlsChannel::take_output(std::string& out) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(out_, &data);
  if (n <= 0) return;
  out.append(data, static_cast<std::size_t>(n));
  (void)BIO_reset(out_);
}

bool TlsChannel::has_output() const {
  return BIO_ctrl_pending(out_) > 0;
}

std::string TlsChannel::version() const {
  return SSL_get_version(ssl_);
}

std::string TlsChannel::cipher() const {
  return SSL_get_cipher_name(ssl_);
}

}  // namespace pgvalve::proxy
