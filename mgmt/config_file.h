// Strict configuration for the ferry daemons: one TOML file per daemon (`--config FILE`), whose
// keys are the daemon's long flag names without the dashes (`give-up-s = 5`, arrays for
// repeatable flags, `true`/`false` for switches). Read with toml++ and checked against the
// daemon's CLI11 options before anything starts: an unknown key (with the closest known one
// suggested), a section, a wrong type, a negative value for an unsigned option, a garbage line,
// and (through the options' own validators) a bad or out-of-range value are refused with the file,
// line and key named. Flags given on the command line override the file. Main thread only, at
// start-up; throws CLI::ParseError, which parse_command_line turns into exit status 2.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace ferry::mgmt {

// Adds --config FILE (strict TOML, above), --check-config (sets `check_config`: the daemon checks
// its configuration and exits 0 without starting) and --version to a daemon's app.
void add_config_flags(CLI::App& app, bool& check_config);

// Parses the command line (and the --config file). Returns -1 to go on; otherwise the exit status
// after printing: 0 for --help and --version, 2 for a usage or configuration error (the message
// names the key and the file's line when the bad value came from the file).
int parse_command_line(CLI::App& app, int argc, char** argv);

// The message parse_command_line prints for `e` (exposed for tests).
std::string describe_parse_error(const CLI::App& app, const CLI::ParseError& e, int argc,
                                 char** argv);

// How to name option `key` (no dashes) in a message about its value: "FILE line N: key 'KEY'"
// when the value came from the --config file, else "--KEY". For checks after parsing.
std::string option_origin(const CLI::App& app, const std::string& key);

// What --check-config prints before exiting 0.
int report_config_ok(const char* daemon);

}  // namespace ferry::mgmt
