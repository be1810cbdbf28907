// ControlInterface implementation (see control.h).
#include "mgmt/control.h"

#include <future>
#include <iterator>
#include <memory>

#include "datapath/reactor.h"

namespace ferry::mgmt {

bool ControlInterface::snapshot(GatewaySnapshot& out, std::chrono::milliseconds timeout) const {
  // Shared with the posted message: a late answer after a timeout writes into it, not into `out`.
  auto result = std::make_shared<std::promise<GatewaySnapshot>>();
  auto future = result->get_future();
  Collect collect = collect_;
  reactor_.post([result, collect] {
    GatewaySnapshot s;
    collect(s);
    result->set_value(std::move(s));
  });
  if (future.wait_for(timeout) != std::future_status::ready) return false;
  out = future.get();
  return true;
}

ControlAnswer ControlInterface::act(const std::string& volume, const ControlAction& action,
                                    std::chrono::milliseconds timeout) const {
  if (!act_)
    return {ControlAnswer::Status::unsupported,
            "this daemon has no runtime controls (journals, RAM cache)"};
  auto result = std::make_shared<std::promise<ControlAnswer>>();
  auto future = result->get_future();
  Act fn = act_;
  reactor_.post([result, fn, volume, action] { result->set_value(fn(volume, action)); });
  if (future.wait_for(timeout) != std::future_status::ready)
    return {ControlAnswer::Status::no_answer, "the reactor did not answer"};
  return future.get();
}

ControlAnswer ControlInterface::disconnect(uint64_t session_id) const {
  if (!disconnect_) return {ControlAnswer::Status::unsupported, "this daemon serves no sessions"};
  if (!disconnect_(session_id))
    return {ControlAnswer::Status::not_found, "no session " + std::to_string(session_id)};
  return {ControlAnswer::Status::ok, {}, session_id};
}

void append_sessions(GatewaySnapshot& s, const std::vector<const ConnectionHub*>& hubs) {
  for (const ConnectionHub* h : hubs) {
    if (h == nullptr) continue;
    std::vector<SessionInfo> some = h->sessions();
    s.sessions.insert(s.sessions.end(), std::make_move_iterator(some.begin()),
                      std::make_move_iterator(some.end()));
  }
}

ControlInterface::Disconnect disconnect_over(std::vector<ConnectionHub*> hubs) {
  return [hubs = std::move(hubs)](uint64_t id) {
    for (ConnectionHub* h : hubs)
      if (h != nullptr && h->disconnect(id, "disconnected by the management API")) return true;
    return false;
  };
}

}  // namespace ferry::mgmt
