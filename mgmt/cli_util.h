// Small parsing helpers shared by the ferry subcommands (command-line values only).
#pragma once

#include <cstdint>
#include <string>

namespace ferry::mgmt {

// "HOST:PORT" (the last colon splits). Port 0 allowed when allow_zero.
bool split_host_port(const std::string& text, std::string& host, uint16_t& port,
                     bool allow_zero = false);
// "USER:SECRET", both non-empty.
bool split_user_secret(const std::string& text, std::string& user, std::string& secret);

}  // namespace ferry::mgmt
