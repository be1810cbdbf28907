// ControlInterface implementation (see control.h).
#include "mgmt/control.h"

#include <future>
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

}  // namespace ferry::mgmt
