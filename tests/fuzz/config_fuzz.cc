// libFuzzer target: the strict TOML config reader (mgmt/config_file.h) on arbitrary bytes, over
// options of every kind it maps (unsigned, signed, float with ranges, text, repeatable text,
// switch). Anything may be refused (a CLI::Error, with its message built as the daemons build
// it); nothing may crash, hang or leak, and an accepted file's values must be in range.
#include <CLI/CLI.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "mgmt/config_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CLI::App app{"fuzz", "ferry fuzz"};
  bool check = false;
  ferry::mgmt::add_config_flags(app, check);
  double give_up_s = 60;
  unsigned queue_depth = 128;
  int level = 1;
  bool stream = false;
  std::string listen;
  std::vector<std::string> volumes;
  app.add_option("--give-up-s", give_up_s)->check(CLI::Range(0.1, 86400.0));
  app.add_option("--queue-depth", queue_depth)->check(CLI::Range(1u, 1024u));
  app.add_option("--level", level)->check(CLI::Range(-5, 22));
  app.add_flag("--stream", stream);
  app.add_option("--listen", listen);
  app.add_option("--volume", volumes);
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    app.parse_from_stream(in);
  } catch (const CLI::ParseError& e) {
    char arg0[] = "ferry";
    char* argv[] = {arg0, nullptr};
    (void)ferry::mgmt::describe_parse_error(app, e, 1, argv);
    return 0;
  } catch (const CLI::Error&) {
    return 0;
  }
  if (give_up_s < 0.1 || give_up_s > 86400 || queue_depth < 1 || queue_depth > 1024 || level < -5 ||
      level > 22)
    std::abort();  // an accepted value out of its range: the strictness is broken
  return 0;
}
