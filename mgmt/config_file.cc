// Strict TOML configuration for the daemons (see config_file.h).
#include "mgmt/config_file.h"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>

#ifndef FERRY_VERSION
#define FERRY_VERSION "unknown"
#endif

namespace ferry::mgmt {

namespace {

// Keys that are flags of the command line only.
bool command_line_only(const std::string& key) {
  return key == "config" || key == "check-config" || key == "help" || key == "version";
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

enum class Want { flag, integer, unsigned_integer, number, text };

Want want_of(const CLI::Option& opt) {
  if (opt.get_expected_min() == 0) return Want::flag;
  const std::string type = opt.get_type_name();
  auto starts = [&](const char* p) { return type.rfind(p, 0) == 0; };
  if (starts("UINT")) return Want::unsigned_integer;
  if (starts("INT")) return Want::integer;
  if (starts("FLOAT")) return Want::number;
  return Want::text;
}

const char* want_text(Want w) {
  switch (w) {
    case Want::flag:
      return "true or false";
    case Want::integer:
      return "an integer";
    case Want::unsigned_integer:
      return "a non-negative integer";
    case Want::number:
      return "a number";
    case Want::text:
      return "a string";
  }
  return "?";
}

const char* toml_type_text(const toml::node& v) {
  switch (v.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    default:
      return "a date or time";
  }
}

// The CLI11 reader: TOML in, checked ConfigItems out; remembers where each key was.
class StrictToml final : public CLI::Config {
 public:
  explicit StrictToml(const CLI::App* app) : app_(app) {}

  std::string to_config(const CLI::App*, bool, bool, std::string) const override { return {}; }

  std::vector<CLI::ConfigItem> from_config(std::istream& in) const override {
    std::stringstream text;
    text << in.rdbuf();
    if (const CLI::Option* config = app_->get_option_no_throw("--config");
        config && config->count() > 0)
      path_ = config->as<std::string>();
    toml::table table;
    try {
      table = toml::parse(text.str(), path_);
    } catch (const toml::parse_error& e) {
      throw CLI::ConfigError(
          where(e.source().begin.line) + ": not TOML: " + std::string(e.description()),
          CLI::ExitCodes::ConfigError);
    }
    std::vector<CLI::ConfigItem> items;
    for (auto&& [key, value] : table) {
      const std::string name(key.str());
      const auto line = key.source().begin.line;
      lines_[name] = line;
      const std::string at = where(line) + ": key '" + name + "'";
      const CLI::Option* opt =
          command_line_only(name) ? nullptr : app_->get_option_no_throw("--" + name);
      if (opt == nullptr) {
        if (value.is_table())
          throw CLI::ConfigError(
              at + ": sections are not used (every key is a top-level flag name)",
              CLI::ExitCodes::ConfigError);
        throw CLI::ConfigError(at + ": unknown key" + suggestion(name),
                               CLI::ExitCodes::ConfigError);
      }
      const Want want = want_of(*opt);
      CLI::ConfigItem item;
      item.name = name;
      if (const toml::array* array = value.as_array()) {
        if (opt->get_expected_max() <= 1 || want == Want::flag)
          throw CLI::ConfigError(
              at + ": wants " + want_text(want) + ", got an array (not repeatable)",
              CLI::ExitCodes::ConfigError);
        for (const toml::node& element : *array) item.inputs.push_back(convert(element, want, at));
        if (item.inputs.empty()) continue;  // an empty array: the default
      } else {
        item.inputs.push_back(convert(value, want, at));
      }
      items.push_back(std::move(item));
    }
    return items;
  }

  // " (FILE line N)" when `key` came from the file.
  std::string line_of(const std::string& key) const {
    auto it = lines_.find(key);
    return it == lines_.end() ? std::string() : where(it->second);
  }
  const std::map<std::string, uint32_t>& keys() const { return lines_; }
  void set_command_line(int argc, char** argv) { argv_.assign(argv + 1, argv + argc); }
  const std::vector<std::string>& command_line() const { return argv_; }

 private:
  std::string where(uint32_t line) const { return path_ + " line " + std::to_string(line); }

  std::string suggestion(const std::string& name) const {
    std::string best;
    size_t best_distance = 4;  // farther than this is no suggestion
    for (const CLI::Option* o : app_->get_options()) {
      std::string n = o->get_single_name();
      if (n.empty() || command_line_only(n)) continue;
      const size_t d = edit_distance(name, n);
      if (d < best_distance) {
        best_distance = d;
        best = n;
      }
    }
    return best.empty() ? std::string() : " (did you mean '" + best + "'?)";
  }

  static std::string convert(const toml::node& v, Want want, const std::string& at) {
    auto wrong = [&] {
      return CLI::ConfigError(
          at + ": wants " + std::string(want_text(want)) + ", got " + toml_type_text(v) +
              (v.is_string() ? " (\"" + std::string(*v.value<std::string>()) + "\")" : ""),
          CLI::ExitCodes::ConfigError);
    };
    switch (want) {
      case Want::flag:
        if (!v.is_boolean()) throw wrong();
        return *v.value<bool>() ? "true" : "false";
      case Want::unsigned_integer:
      case Want::integer: {
        if (!v.is_integer()) throw wrong();
        const int64_t i = *v.value<int64_t>();
        if (want == Want::unsigned_integer && i < 0)
          throw CLI::ConfigError(at + ": must not be negative (" + std::to_string(i) + ")",
                                 CLI::ExitCodes::ConfigError);
        return std::to_string(i);
      }
      case Want::number: {
        if (!v.is_number()) throw wrong();
        const double d = *v.value<double>();
        char buf[64];
        auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d);
        return ec == std::errc{} ? std::string(buf, end) : throw wrong();
      }
      case Want::text:
        if (!v.is_string()) throw wrong();
        return std::string(*v.value<std::string>());
    }
    throw wrong();
  }

  const CLI::App* app_;
  std::vector<std::string> argv_;
  mutable std::string path_ = "config";
  mutable std::map<std::string, uint32_t> lines_;
};

bool given_on_command_line(const std::string& key, const std::vector<std::string>& args) {
  const std::string flag = "--" + key;
  for (const std::string& a : args)
    if (a == flag || a.rfind(flag + "=", 0) == 0) return true;
  return false;
}

}  // namespace

void add_config_flags(CLI::App& app, bool& check_config) {
  auto reader = std::make_shared<StrictToml>(&app);
  app.config_formatter(reader);
  app.allow_config_extras(CLI::config_extras_mode::error);
  app.set_config(
      "--config", "",
      "read options from this TOML file: keys are the long flag names (give-up-s = 5), "
      "arrays for repeatable flags; unknown keys, wrong types and values out of range are "
      "refused; flags on the command line win (see README, Configuration)");
  app.add_flag(
      "--check-config", check_config,
      "check the configuration (flags and --config file) and exit: 0 when valid, 2 when not");
  app.set_version_flag("--version", std::string("ferry ") + FERRY_VERSION);
}

std::string describe_parse_error(const CLI::App& app, const CLI::ParseError& e, int argc,
                                 char** argv) {
  std::string message = e.what();
  auto reader = std::dynamic_pointer_cast<StrictToml>(app.get_config_formatter());
  if (reader == nullptr) return message;
  // A value from the file that the option's validator refused: name the file's line.
  for (const auto& [key, line] : reader->keys()) {
    const std::string flag = "--" + key;
    const size_t at = message.find(flag);
    if (at == std::string::npos) continue;
    const size_t after = at + flag.size();
    if (after < message.size() &&
        (std::isalnum(static_cast<unsigned char>(message[after])) || message[after] == '-'))
      continue;
    if (given_on_command_line(key, std::vector<std::string>(argv + 1, argv + argc))) continue;
    return reader->line_of(key) + ": key '" + key + "': " + message;
  }
  return message;
}

std::string option_origin(const CLI::App& app, const std::string& key) {
  auto reader = std::dynamic_pointer_cast<StrictToml>(app.get_config_formatter());
  if (reader != nullptr && reader->keys().count(key) != 0 &&
      !given_on_command_line(key, reader->command_line()))
    return reader->line_of(key) + ": key '" + key + "'";
  return "--" + key;
}

int parse_command_line(CLI::App& app, int argc, char** argv) {
  if (auto reader = std::dynamic_pointer_cast<StrictToml>(app.get_config_formatter()))
    reader->set_command_line(argc, argv);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::fprintf(stderr, "%s: %s\n", app.get_name().c_str(),
                 describe_parse_error(app, e, argc, argv).c_str());
    std::fprintf(stderr, "Run with --help for more information.\n");
    return 2;
  }
  return -1;
}

int report_config_ok(const char* daemon) {
  std::fprintf(stderr, "%s: configuration OK\n", daemon);
  return 0;
}

}  // namespace ferry::mgmt
