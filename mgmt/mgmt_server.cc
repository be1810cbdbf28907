// MgmtServer implementation (see mgmt_server.h). HTTP threads only.
#include "mgmt/mgmt_server.h"

#include <httplib.h>
#include <openssl/crypto.h>
#include <sys/stat.h>

#include <charconv>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "mgmt/dashboard_assets.h"
#include "mgmt/gateway_metrics.h"

namespace ferry::mgmt {

namespace {

constexpr auto kSnapshotTimeout = std::chrono::milliseconds(2000);

nlohmann::json volume_json(const VolumeSnapshot& v) {
  const IoMeterSnapshot& io = v.stats.io;
  nlohmann::json tiers = nlohmann::json::array();
  for (const VolumeStats::Tier& t : v.stats.tiers) {
    const uint64_t lookups = t.hits + t.misses;
    tiers.push_back({{"tier", t.tier},
                     {"hits", t.hits},
                     {"misses", t.misses},
                     {"bypassed", t.bypassed},
                     {"hit_ratio", lookups ? double(t.hits) / double(lookups) : 0.0},
                     {"bytes_fetched", t.bytes_fetched},
                     {"evictions", t.evictions},
                     {"capacity_bytes", t.capacity_bytes},
                     {"resident_bytes", t.resident_bytes}});
  }
  nlohmann::json j = {
      {"name", v.name},
      {"stack", v.stack},
      {"size_bytes", v.size_bytes},
      {"block_size_bytes", v.block_size_bytes},
      {"io",
       {{"reads", io.reads},
        {"writes", io.writes},
        {"flushes", io.flushes},
        {"errors", io.errors},
        {"bytes_read", io.bytes_read},
        {"bytes_written", io.bytes_written},
        {"latency_us_mean",
         io.latency_count ? double(io.latency_sum_us) / double(io.latency_count) : 0.0}}},
      {"cache", tiers}};
  if (v.stats.has_journal)
    j["journal"] = {{"policy", journal::to_string(v.stats.journal_policy)},
                    {"write_back_paused", v.stats.write_back_paused},
                    {"used_bytes", v.stats.journal_bytes_used},
                    {"free_bytes", v.stats.journal_bytes_free},
                    {"dirty_bytes", v.stats.dirty_bytes},
                    {"write_back_lag_ms", v.stats.write_back_lag_ms},
                    {"written_back_bytes", v.stats.journal_bytes_written_back},
                    {"write_back_rate_bytes_per_s", v.stats.write_back_rate_bytes_per_s},
                    {"rpo_target_ms", v.stats.rpo_target_ms},
                    {"rpo_missed", v.stats.rpo_missed},
                    {"rpo_misses", v.stats.rpo_misses}};
  if (v.stats.stream.started)
    j["stream"] = {{"percent", v.stats.stream.percent()},
                   {"done_bytes", v.stats.stream.done_bytes},
                   {"finished", v.stats.stream.finished}};
  if (v.has_wan)
    j["wan"] = {{"raw_bytes_in", v.wan_raw_bytes_in},
                {"sent_bytes_in", v.wan_sent_bytes_in},
                {"raw_bytes_out", v.wan_raw_bytes_out}};
  if (v.has_wan && v.wan_sent_out_known) j["wan"]["sent_bytes_out"] = v.wan_sent_bytes_out;
  return j;
}

nlohmann::json session_json(const SessionInfo& i) {
  return {{"id", i.id},
          {"protocol", i.protocol},
          {"client", i.client},
          {"peer", i.peer},
          {"target", i.target},
          {"detail", i.detail},
          {"since_ms", i.since_unix_ms},
          {"commands", i.commands},
          {"bytes_read", i.bytes_read},
          {"bytes_written", i.bytes_written}};
}

// The dashboard's files hold no data (the page fetches /api/v1 with the token the user gives
// it), so they are served without a token; everything else needs one.
bool is_dashboard_asset(const std::string& path) {
  return path == "/" || path == "/dashboard" || path.rfind("/dashboard/", 0) == 0;
}

void serve_asset(httplib::Response& res, const char* body, const char* type) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'");
  res.set_content(body, type);
}

void error(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(nlohmann::json{{"error", message}}.dump() + "\n", "application/json");
}

// A change's answer: `ok_body` on success, else the status that names why not.
void answer(httplib::Response& res, const ControlAnswer& a, const nlohmann::json& ok_body) {
  switch (a.status) {
    case ControlAnswer::Status::ok:
      return res.set_content(ok_body.dump(2) + "\n", "application/json");
    case ControlAnswer::Status::not_found:
      return error(res, 404, a.message);
    case ControlAnswer::Status::conflict:
    case ControlAnswer::Status::unsupported:
      return error(res, 409, a.message);
    case ControlAnswer::Status::no_answer:
      return error(res, 503, a.message);
  }
}

}  // namespace

MgmtServer::MgmtServer(const ControlInterface& control, MetricsRegistry& registry,
                       std::string token)
    : control_(control), registry_(registry), token_(std::move(token)) {}

MgmtServer::~MgmtServer() { stop(); }

std::string MgmtServer::read_token_file(const std::string& path, std::string& token) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return path + ": cannot read the token file";
  if ((st.st_mode & 077) != 0)
    return path + ": the token file must not be readable by others (chmod 600)";
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  const auto first = line.find_first_not_of(" \t\r");
  const auto last = line.find_last_not_of(" \t\r");
  token = first == std::string::npos ? std::string() : line.substr(first, last - first + 1);
  if (token.size() < 16) return path + ": the token must be at least 16 characters";
  return {};
}

std::string MgmtServer::start(const std::string& host, uint16_t port) {
  http_ = std::make_unique<httplib::Server>();
  http_->new_task_queue = [] { return new httplib::ThreadPool(1); };  // one worker thread
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (is_dashboard_asset(req.path)) return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string want = "Bearer " + token_;
    if (auth.size() != want.size() || CRYPTO_memcmp(auth.data(), want.data(), want.size()) != 0) {
      res.set_header("WWW-Authenticate", "Bearer realm=\"ferry\"");
      error(res, 401, auth.empty() ? "missing bearer token" : "wrong bearer token");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http_->Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_redirect("/dashboard/");
  });
  http_->Get("/dashboard", [](const httplib::Request&, httplib::Response& res) {
    res.set_redirect("/dashboard/");
  });
  http_->Get("/dashboard/", [](const httplib::Request&, httplib::Response& res) {
    serve_asset(res, kDashboardHtml, "text/html; charset=utf-8");
  });
  http_->Get("/dashboard/dashboard.js", [](const httplib::Request&, httplib::Response& res) {
    serve_asset(res, kDashboardJs, "text/javascript; charset=utf-8");
  });
  http_->Get("/dashboard/dashboard.css", [](const httplib::Request&, httplib::Response& res) {
    serve_asset(res, kDashboardCss, "text/css; charset=utf-8");
  });
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    GatewaySnapshot s;
    if (!control_.snapshot(s, kSnapshotTimeout))
      return error(res, 503, "the reactor did not answer");
    publish(registry_, s);
    res.set_content(registry_.render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http_->Get("/api/v1/volumes", [this](const httplib::Request&, httplib::Response& res) {
    GatewaySnapshot s;
    if (!control_.snapshot(s, kSnapshotTimeout))
      return error(res, 503, "the reactor did not answer");
    const auto taken = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
    nlohmann::json list = nlohmann::json::array();
    for (const VolumeSnapshot& v : s.volumes) list.push_back(volume_json(v));
    res.set_content(
        nlohmann::json{{"daemon", s.daemon}, {"time_ms", taken}, {"volumes", list}}.dump(2) + "\n",
        "application/json");
  });
  http_->Get(R"(/api/v1/volumes/([^/]+))",
             [this](const httplib::Request& req, httplib::Response& res) {
               GatewaySnapshot s;
               if (!control_.snapshot(s, kSnapshotTimeout))
                 return error(res, 503, "the reactor did not answer");
               const std::string name = req.matches[1];
               for (const VolumeSnapshot& v : s.volumes)
                 if (v.name == name)
                   return res.set_content(volume_json(v).dump(2) + "\n", "application/json");
               error(res, 404, "no volume '" + name + "'");
             });
  http_->Put(R"(/api/v1/volumes/([^/]+)/policy)", [this](const httplib::Request& req,
                                                         httplib::Response& res) {
    const std::string name = req.matches[1];
    const nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
    if (body.is_discarded())
      return error(res, 400, "the body is not JSON; want {\"policy\": \"POLICY\"}");
    if (!body.is_object() || body.size() != 1 || !body.contains("policy") ||
        !body["policy"].is_string())
      return error(res, 400, "want exactly {\"policy\": \"POLICY\"}");
    journal::Policy policy;
    const std::string text = body["policy"].get<std::string>();
    if (!journal::parse_policy(text, policy))
      return error(res, 400,
                   "unknown policy '" + text + "' (write-back | cloud-persist | test-clone)");
    ControlAction action;
    action.policy = policy;
    answer(res, control_.act(name, action, kSnapshotTimeout),
           nlohmann::json{{"name", name}, {"policy", text}});
  });
  http_->Post(R"(/api/v1/volumes/([^/]+)/write-back/(pause|resume|flush))",
              [this](const httplib::Request& req, httplib::Response& res) {
                const std::string name = req.matches[1], verb = req.matches[2];
                ControlAction action;
                action.kind = verb == "pause"    ? ControlAction::Kind::pause_write_back
                              : verb == "resume" ? ControlAction::Kind::resume_write_back
                                                 : ControlAction::Kind::flush_write_back;
                answer(res, control_.act(name, action, kSnapshotTimeout),
                       nlohmann::json{{"name", name}, {"write_back", verb}});
              });
  http_->Put(R"(/api/v1/volumes/([^/]+)/write-back)", [this](const httplib::Request& req,
                                                             httplib::Response& res) {
    const std::string name = req.matches[1];
    const char* want = "want {\"rate_mbit\": N, \"rpo_s\": S} (either or both; 0: none)";
    const nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
    if (body.is_discarded()) return error(res, 400, std::string("the body is not JSON; ") + want);
    if (!body.is_object() || body.empty()) return error(res, 400, want);
    ControlAction action;
    action.kind = ControlAction::Kind::set_write_back_limits;
    for (const auto& [key, value] : body.items()) {
      if ((key != "rate_mbit" && key != "rpo_s") || !value.is_number() || value.get<double>() < 0)
        return error(res, 400, "'" + key + "': " + want);
      const double v = value.get<double>();
      if (key == "rate_mbit") {
        if (v > 1e6) return error(res, 400, "rate_mbit: at most 1000000");
        action.set_rate = true;
        action.bytes = uint64_t(v * 1e6 / 8);
      } else {
        if (v > 86400) return error(res, 400, "rpo_s: at most 86400");
        action.set_rpo = true;
        action.rpo_ms = uint32_t(v * 1000);
      }
    }
    const ControlAnswer a = control_.act(name, action, kSnapshotTimeout);
    answer(res, a, nlohmann::json{{"name", name}, {"write_back_rate_bytes_per_s", a.value}});
  });
  http_->Put(R"(/api/v1/volumes/([^/]+)/cache)", [this](const httplib::Request& req,
                                                        httplib::Response& res) {
    const std::string name = req.matches[1];
    const nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
    if (body.is_discarded()) return error(res, 400, "the body is not JSON; want {\"ram_mib\": N}");
    if (!body.is_object() || body.size() != 1 || !body.contains("ram_mib") ||
        !body["ram_mib"].is_number_unsigned() || body["ram_mib"].get<uint64_t>() > (1ull << 24))
      return error(res, 400, "want exactly {\"ram_mib\": N}, N a whole number of MiB");
    ControlAction action;
    action.kind = ControlAction::Kind::resize_ram_cache;
    action.bytes = body["ram_mib"].get<uint64_t>() << 20;
    const ControlAnswer a = control_.act(name, action, kSnapshotTimeout);
    answer(res, a, nlohmann::json{{"name", name}, {"ram_capacity_bytes", a.value}});
  });
  http_->Post(R"(/api/v1/volumes/([^/]+)/cache/drop-clean)",
              [this](const httplib::Request& req, httplib::Response& res) {
                const std::string name = req.matches[1];
                ControlAction action;
                action.kind = ControlAction::Kind::drop_clean_cache;
                const ControlAnswer a = control_.act(name, action, kSnapshotTimeout);
                answer(res, a, nlohmann::json{{"name", name}, {"dropped_chunks", a.value}});
              });
  http_->Get("/api/v1/wan", [this](const httplib::Request&, httplib::Response& res) {
    GatewaySnapshot s;
    if (!control_.snapshot(s, kSnapshotTimeout))
      return error(res, 503, "the reactor did not answer");
    if (!s.has_wan) return error(res, 404, "this daemon (" + s.daemon + ") has no WAN link");
    uint64_t raw_in = 0, sent_in = 0, raw_out = 0, sent_out = 0;
    for (const VolumeSnapshot& v : s.volumes) {
      raw_in += v.wan_raw_bytes_in;
      sent_in += v.wan_sent_bytes_in;
      raw_out += v.wan_raw_bytes_out;
      sent_out += v.wan_sent_bytes_out;
    }
    const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    nlohmann::json j = {{"daemon", s.daemon},
                        {"time_ms", now_ms},
                        {"state", s.wan_connections > 0 ? "up" : "down"},
                        {"connections", s.wan_connections},
                        {"reconnects", s.wan_reconnects},
                        {"wire_bytes_in", s.wan_wire_bytes_in},
                        {"wire_bytes_out", s.wan_wire_bytes_out},
                        {"raw_bytes_in", raw_in},
                        {"sent_bytes_in", sent_in},
                        {"raw_bytes_out", raw_out},
                        {"cap_bytes_per_s", s.wan_cap_bytes_per_s}};
    if (s.daemon == "cloud-edge") {
      j["sent_bytes_out"] = sent_out;
      j["peer"] = s.wan_peer;
      j["down_for_ms"] = s.wan_down_for_ms;
      if (s.wan_ping_rtt_us >= 0) j["rtt_ms"] = double(s.wan_ping_rtt_us) / 1000;
      if (s.wan_tcp_rtt_us >= 0) {
        j["tcp_rtt_ms"] = double(s.wan_tcp_rtt_us) / 1000;
        j["tcp_rtt_var_ms"] = double(s.wan_tcp_rtt_var_us) / 1000;
      }
    }
    res.set_content(j.dump(2) + "\n", "application/json");
  });
  http_->Put("/api/v1/wan", [this](const httplib::Request& req, httplib::Response& res) {
    const char* want = "want exactly {\"cap_mbit\": N} (0: no cap)";
    const nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
    if (body.is_discarded()) return error(res, 400, std::string("the body is not JSON; ") + want);
    if (!body.is_object() || body.size() != 1 || !body.contains("cap_mbit") ||
        !body["cap_mbit"].is_number() || body["cap_mbit"].get<double>() < 0 ||
        body["cap_mbit"].get<double>() > 1e6)
      return error(res, 400, want);
    ControlAction action;
    action.kind = ControlAction::Kind::set_wan_cap;
    action.bytes = uint64_t(body["cap_mbit"].get<double>() * 1e6 / 8);
    const ControlAnswer a = control_.act("", action, kSnapshotTimeout);
    answer(res, a, nlohmann::json{{"cap_bytes_per_s", a.value}});
  });
  http_->Get("/api/v1/sessions", [this](const httplib::Request&, httplib::Response& res) {
    GatewaySnapshot s;
    if (!control_.snapshot(s, kSnapshotTimeout))
      return error(res, 503, "the reactor did not answer");
    nlohmann::json list = nlohmann::json::array();
    for (const SessionInfo& i : s.sessions) list.push_back(session_json(i));
    res.set_content(nlohmann::json{{"daemon", s.daemon}, {"sessions", list}}.dump(2) + "\n",
                    "application/json");
  });
  http_->Delete(
      R"(/api/v1/sessions/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
        const std::string text = req.matches[1];
        uint64_t id = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
        if (ec != std::errc() || end != text.data() + text.size() || id == 0)
          return error(res, 400, "'" + text + "' is not a session id (GET /api/v1/sessions)");
        const ControlAnswer a = control_.disconnect(id);
        if (a.status == ControlAnswer::Status::ok) res.status = 202;  // closed on its reactor
        answer(res, a, nlohmann::json{{"id", id}, {"disconnecting", true}});
      });
  http_->set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) error(res, res.status, res.status == 404 ? "no such endpoint" : "error");
  });
  const int bound =
      port == 0 ? http_->bind_to_any_port(host) : (http_->bind_to_port(host, port) ? port : -1);
  if (bound <= 0)
    return "cannot listen on " + host + ":" + std::to_string(port) + " (port in use?)";
  port_ = uint16_t(bound);
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return {};
}

void MgmtServer::stop() {
  if (!http_) return;
  http_->stop();
  if (thread_.joinable()) thread_.join();
  http_.reset();
}

}  // namespace ferry::mgmt
