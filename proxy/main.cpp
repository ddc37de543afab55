// pgvalve: a PostgreSQL wire-protocol proxy. Command line per DESIGN.md §2.
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "config/config.h"
#include "proxy/app.h"
#include "proxy/log.h"

namespace {

void print_usage(std::FILE* to) {
  std::fprintf(to,
               "usage: pgvalve --config FILE [--check]\n"
               "       pgvalve --version\n"
               "       pgvalve --help\n");
}

// A command line pgvalve cannot run with: what is wrong, then how to call it.
int usage_error(const std::string& why) {
  std::fprintf(stderr, "pgvalve: %s\n", why.c_str());
  print_usage(stderr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // A fixed mmap threshold: buffers that grew for one large message come from mmap and go back
  // to the system when freed. glibc's default raises the threshold after the first such free and
  // then keeps them in its heap, so a burst of large messages would leave RSS high for good.
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  std::string config_path;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--version") == 0) {
      std::printf("pgvalve %s\n", PGVALVE_VERSION);
      return 0;
    } else if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      print_usage(stdout);
      return 0;
    } else if (std::strcmp(argv[i], "--check") == 0) {
      check = true;
    } else if (std::strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
      config_path = argv[++i];
    } else if (std::strncmp(argv[i], "--config=", 9) == 0) {
      config_path = argv[i] + 9;
    } else if (std::strcmp(argv[i], "--config") == 0) {
      return usage_error("--config needs the path of a configuration file");
    } else {
      return usage_error(std::string("unknown option ") + argv[i]);
    }
  }
  if (config_path.empty()) return usage_error("--config FILE is required");

  auto loaded = pgvalve::config::load_config_file(config_path);
  if (!loaded.errors.empty()) {
    for (const auto& e : loaded.errors) {
      std::fprintf(stderr, "%s\n", e.to_string(config_path).c_str());
    }
    std::fprintf(stderr, "pgvalve: %zu problem(s) in %s; nothing was started\n",
                 loaded.errors.size(), config_path.c_str());
    return 1;
  }
  if (check) {
    for (const auto& [key, value] : pgvalve::config::describe(*loaded.config)) {
      std::printf("%s = %s\n", key.c_str(), value.c_str());
    }
    std::printf("pgvalve: %s is valid\n", config_path.c_str());
    return 0;
  }
  std::signal(SIGPIPE, SIG_IGN);
  pgvalve::proxy::App app(loaded.config);
  return app.run();
}
