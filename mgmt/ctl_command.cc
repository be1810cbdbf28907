// `ferry ctl` (see ctl_command.h).
#include "mgmt/ctl_command.h"

#include <httplib.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "mgmt/cli_util.h"
#include "mgmt/config_file.h"
#include "mgmt/mgmt_server.h"

namespace ferry::mgmt {

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

std::string percent_encoded(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == ':') {
      out += char(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

// One volume's line of the table.
void print_row(const nlohmann::json& v) {
  const auto& io = v.at("io");
  std::string hits;
  for (const auto& t : v.at("cache")) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%s%s %.0f%%", hits.empty() ? "" : ", ",
                  t.at("tier").get<std::string>().c_str(), 100 * t.at("hit_ratio").get<double>());
    hits += buf;
  }
  const std::string dirty =
      v.contains("journal") ? human_bytes(v["journal"].at("dirty_bytes").get<double>()) : "-";
  std::printf("%-16s %10s %10llu %10llu %11s %11s %9.0f  %-16s %10s  %s\n",
              v.at("name").get<std::string>().c_str(),
              human_bytes(v.at("size_bytes").get<double>()).c_str(),
              io.at("reads").get<unsigned long long>(), io.at("writes").get<unsigned long long>(),
              human_bytes(io.at("bytes_read").get<double>()).c_str(),
              human_bytes(io.at("bytes_written").get<double>()).c_str(),
              io.at("latency_us_mean").get<double>(), hits.empty() ? "-" : hits.c_str(),
              dirty.c_str(), v.at("stack").get<std::string>().c_str());
}

void print_header() {
  std::printf("%-16s %10s %10s %10s %11s %11s %9s  %-16s %10s  %s\n", "VOLUME", "SIZE", "READS",
              "WRITES", "READ", "WRITTEN", "LAT(us)", "CACHE HITS", "DIRTY", "STACK");
}

void print_sessions(const nlohmann::json& body) {
  std::printf("%-6s %-6s %-24s %-40s %-20s %9s %11s %11s  %s\n", "ID", "PROTO", "PEER", "CLIENT",
              "TARGET", "COMMANDS", "READ", "WRITTEN", "DETAIL");
  for (const auto& s : body.at("sessions")) {
    const std::string client = s.at("client").get<std::string>();
    std::printf("%-6llu %-6s %-24s %-40s %-20s %9llu %11s %11s  %s\n",
                s.at("id").get<unsigned long long>(), s.at("protocol").get<std::string>().c_str(),
                s.at("peer").get<std::string>().c_str(), client.empty() ? "-" : client.c_str(),
                s.at("target").get<std::string>().c_str(),
                s.at("commands").get<unsigned long long>(),
                human_bytes(s.at("bytes_read").get<double>()).c_str(),
                human_bytes(s.at("bytes_written").get<double>()).c_str(),
                s.at("detail").get<std::string>().c_str());
  }
}

}  // namespace

int run_ctl_command(int argc, char** argv) {
  CLI::App app{"Talk to a running daemon's management endpoint (--mgmt-listen)", "ferry ctl"};
  std::string address = "127.0.0.1:9180";
  std::string token_file;
  bool json = false;
  bool check_config = false;
  add_config_flags(app, check_config);
  app.add_option("--mgmt", address, "the daemon's --mgmt-listen ADDRESS:PORT")
      ->capture_default_str();
  app.add_option("--mgmt-token-file", token_file,
                 "file holding the bearer token (the daemon's --mgmt-token-file)")
      ->required();
  app.add_flag("--json", json, "print the API's JSON instead of a table");
  app.require_subcommand(1);
  app.fallthrough();  // `ferry ctl volumes --json` as well as `ferry ctl --json volumes`
  auto* volumes =
      app.add_subcommand("volumes", "list the volumes: I/O, cache hit ratio per tier, dirty bytes");
  std::string volume_name;
  auto* volume = app.add_subcommand("volume", "show one volume");
  volume->add_option("NAME", volume_name, "volume name")->required();
  auto* metrics = app.add_subcommand("metrics", "print GET /metrics (Prometheus text)");
  std::string policy_volume, policy;
  auto* set_policy = app.add_subcommand(
      "set-policy", "change a volume's journal policy (PUT /api/v1/volumes/NAME/policy)");
  set_policy->add_option("NAME", policy_volume, "volume name")->required();
  set_policy->add_option("POLICY", policy, "write-back | cloud-persist")->required();
  std::string wb_volume, wb_action;
  auto* write_back = app.add_subcommand(
      "write-back",
      "pause, resume or flush a volume's write-back (POST /api/v1/volumes/NAME/write-back/ACTION)");
  write_back->add_option("NAME", wb_volume, "volume name")->required();
  write_back->add_option("ACTION", wb_action, "pause | resume | flush")
      ->required()
      ->check(CLI::IsMember({"pause", "resume", "flush"}));
  std::string cache_volume;
  uint64_t cache_ram_mib = 0;
  bool cache_drop_clean = false;
  auto* cache = app.add_subcommand(
      "cache",
      "change a volume's RAM cache budget (--ram-mib N: PUT /api/v1/volumes/NAME/cache) or drop "
      "what it holds (--drop-clean: POST /api/v1/volumes/NAME/cache/drop-clean)");
  cache->add_option("NAME", cache_volume, "volume name")->required();
  auto* ram_mib = cache
                      ->add_option("--ram-mib", cache_ram_mib,
                                   "new RAM tier budget in MiB (at most the size it started with)")
                      ->check(CLI::Range(uint64_t(0), uint64_t(1) << 24));
  auto* drop = cache->add_flag("--drop-clean", cache_drop_clean, "drop the RAM tier's chunks");
  ram_mib->excludes(drop);
  cache->callback([ram_mib, drop] {
    if (ram_mib->count() == 0 && drop->count() == 0)
      throw CLI::ValidationError("cache", "give --ram-mib N or --drop-clean");
  });
  std::string limits_volume;
  double limits_rate_mbit = 0, limits_rpo_s = 0;
  auto* limits = app.add_subcommand("write-back-limits",
                                    "change a volume's write-back rate cap and / or RPO target "
                                    "(PUT /api/v1/volumes/NAME/write-back)");
  limits->add_option("NAME", limits_volume, "volume name")->required();
  auto* rate_opt =
      limits->add_option("--rate-mbit", limits_rate_mbit, "write-back rate cap in Mbit/s (0: none)")
          ->check(CLI::Range(0.0, 1e6));
  auto* rpo_opt = limits->add_option("--rpo-s", limits_rpo_s, "RPO target in seconds (0: none)")
                      ->check(CLI::Range(0.0, 86400.0));
  limits->callback([rate_opt, rpo_opt] {
    if (rate_opt->count() == 0 && rpo_opt->count() == 0)
      throw CLI::ValidationError("write-back-limits", "give --rate-mbit N and / or --rpo-s S");
  });
  double wan_cap_mbit = 0;
  auto* wan = app.add_subcommand(
      "wan",
      "show the WAN link (GET /api/v1/wan), or with --cap-mbit N set the dc-edge's rate cap");
  auto* cap_opt =
      wan->add_option("--cap-mbit", wan_cap_mbit, "the link's rate cap in Mbit/s (0: none)")
          ->check(CLI::Range(0.0, 1e6));
  auto* sessions = app.add_subcommand(
      "sessions", "list the iSCSI sessions and NBD clients: peer, initiator, target, I/O");
  uint64_t session_id = 0;
  auto* disconnect = app.add_subcommand(
      "disconnect",
      "close one session (DELETE /api/v1/sessions/ID; the initiator may log in again)");
  disconnect->add_option("ID", session_id, "session id (ferry ctl sessions)")
      ->required()
      ->check(CLI::Range(uint64_t(1), UINT64_MAX));
  if (int status = parse_command_line(app, argc, argv); status >= 0) return status;
  if (check_config) return report_config_ok("ferry ctl");
  std::string host, token;
  uint16_t port = 0;
  if (!split_host_port(address, host, port)) {
    std::fprintf(stderr, "ferry ctl: --mgmt wants ADDRESS:PORT, got '%s'\n", address.c_str());
    return 2;
  }
  if (std::string e = MgmtServer::read_token_file(token_file, token); !e.empty()) {
    std::fprintf(stderr, "ferry ctl: %s\n", e.c_str());
    return 2;
  }
  const std::string path =
      volumes->parsed()      ? "/api/v1/volumes"
      : volume->parsed()     ? "/api/v1/volumes/" + percent_encoded(volume_name)
      : set_policy->parsed() ? "/api/v1/volumes/" + percent_encoded(policy_volume) + "/policy"
      : write_back->parsed()
          ? "/api/v1/volumes/" + percent_encoded(wb_volume) + "/write-back/" + wb_action
      : cache->parsed() ? "/api/v1/volumes/" + percent_encoded(cache_volume) +
                              (cache_drop_clean ? "/cache/drop-clean" : "/cache")
      : limits->parsed()     ? "/api/v1/volumes/" + percent_encoded(limits_volume) + "/write-back"
      : wan->parsed()        ? "/api/v1/wan"
      : sessions->parsed()   ? "/api/v1/sessions"
      : disconnect->parsed() ? "/api/v1/sessions/" + std::to_string(session_id)
                             : "/metrics";
  nlohmann::json limits_body = nlohmann::json::object();
  if (rate_opt->count() > 0) limits_body["rate_mbit"] = limits_rate_mbit;
  if (rpo_opt->count() > 0) limits_body["rpo_s"] = limits_rpo_s;
  httplib::Client client(host, port);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  const httplib::Headers headers = {{"Authorization", "Bearer " + token}};
  auto res =
      set_policy->parsed()
          ? client.Put(path, headers, nlohmann::json{{"policy", policy}}.dump(), "application/json")
      : write_back->parsed() || (cache->parsed() && cache_drop_clean)
          ? client.Post(path, headers, "", "application/json")
      : cache->parsed()
          ? client.Put(path, headers, nlohmann::json{{"ram_mib", cache_ram_mib}}.dump(),
                       "application/json")
      : limits->parsed()     ? client.Put(path, headers, limits_body.dump(), "application/json")
      : disconnect->parsed() ? client.Delete(path, headers)
      : wan->parsed() && cap_opt->count() > 0
          ? client.Put(path, headers, nlohmann::json{{"cap_mbit", wan_cap_mbit}}.dump(),
                       "application/json")
          : client.Get(path, headers);
  if (!res) {
    std::fprintf(stderr, "ferry ctl: no answer from %s (%s)\n", address.c_str(),
                 httplib::to_string(res.error()).c_str());
    return 1;
  }
  if (res->status != 200 && !(disconnect->parsed() && res->status == 202)) {
    std::string why = res->body;
    try {
      why = nlohmann::json::parse(res->body).at("error").get<std::string>();
    } catch (const std::exception&) {
    }
    std::fprintf(stderr, "ferry ctl: %s: HTTP %d: %s\n", path.c_str(), res->status, why.c_str());
    return 1;
  }
  if (set_policy->parsed() && !json) {
    std::printf("%s: policy %s\n", policy_volume.c_str(), policy.c_str());
    return 0;
  }
  if (write_back->parsed() && !json) {
    std::printf("%s: write-back %s\n", wb_volume.c_str(), wb_action.c_str());
    return 0;
  }
  if (cache->parsed() && !json) {
    try {
      const auto body = nlohmann::json::parse(res->body);
      if (cache_drop_clean)
        std::printf("%s: dropped %llu clean chunk(s) from the RAM tier\n", cache_volume.c_str(),
                    static_cast<unsigned long long>(body.at("dropped_chunks").get<uint64_t>()));
      else
        std::printf(
            "%s: RAM cache budget %llu MiB\n", cache_volume.c_str(),
            static_cast<unsigned long long>(body.at("ram_capacity_bytes").get<uint64_t>() >> 20));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry ctl: unexpected answer from %s: %s\n", path.c_str(), e.what());
      return 1;
    }
    return 0;
  }
  if (limits->parsed() && !json) {
    std::printf("%s: write-back limits set", limits_volume.c_str());
    if (rate_opt->count() > 0) std::printf(", rate cap %g Mbit/s", limits_rate_mbit);
    if (rpo_opt->count() > 0) std::printf(", RPO target %g s", limits_rpo_s);
    std::printf(" (0: none)\n");
    return 0;
  }
  if (wan->parsed() && !json) {
    try {
      const auto w = nlohmann::json::parse(res->body);
      if (cap_opt->count() > 0) {
        std::printf("WAN rate cap %g Mbit/s (0: none)\n", wan_cap_mbit);
        return 0;
      }
      std::printf("%s: link %s, %llu connection(s), %llu reconnect(s)",
                  w.at("daemon").get<std::string>().c_str(),
                  w.at("state").get<std::string>().c_str(),
                  w.at("connections").get<unsigned long long>(),
                  w.at("reconnects").get<unsigned long long>());
      if (w.contains("peer")) std::printf(", to %s", w["peer"].get<std::string>().c_str());
      if (w.contains("rtt_ms")) std::printf(", RTT %.1f ms", w["rtt_ms"].get<double>());
      std::printf("\n  in: %s asked, %s sent; out: %s; cap %s\n",
                  human_bytes(w.at("raw_bytes_in").get<double>()).c_str(),
                  human_bytes(w.at("sent_bytes_in").get<double>()).c_str(),
                  human_bytes(w.at("raw_bytes_out").get<double>()).c_str(),
                  w.at("cap_bytes_per_s").get<uint64_t>() == 0
                      ? "none"
                      : (human_bytes(w["cap_bytes_per_s"].get<double>()) + "/s").c_str());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry ctl: unexpected answer from %s: %s\n", path.c_str(), e.what());
      return 1;
    }
    return 0;
  }
  if (disconnect->parsed() && !json) {
    std::printf("session %llu: disconnecting\n", static_cast<unsigned long long>(session_id));
    return 0;
  }
  if (sessions->parsed() && !json) {
    try {
      print_sessions(nlohmann::json::parse(res->body));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry ctl: unexpected answer from %s: %s\n", path.c_str(), e.what());
      return 1;
    }
    return 0;
  }
  if (metrics->parsed() || json) {
    std::fputs(res->body.c_str(), stdout);
    return 0;
  }
  try {
    const auto body = nlohmann::json::parse(res->body);
    print_header();
    if (volume->parsed()) {
      print_row(body);
    } else {
      for (const auto& v : body.at("volumes")) print_row(v);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry ctl: unexpected answer from %s: %s\n", path.c_str(), e.what());
    return 1;
  }
  return 0;
}

}  // namespace ferry::mgmt
