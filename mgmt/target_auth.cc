// make_target_auth (see target_auth.h).
#include "mgmt/target_auth.h"

#include "mgmt/cli_util.h"

namespace ferry::mgmt {

std::string make_target_auth(const std::string& iqn, const std::string& chap,
                             const std::string& mutual_chap,
                             const std::vector<std::string>& allowed_initiators,
                             iscsi::TargetAuthConfig& out) {
  out = iscsi::TargetAuthConfig{};
  out.iqn = iqn;
  if (!chap.empty() && !split_user_secret(chap, out.chap_user, out.chap_secret))
    return "--chap wants USER:SECRET";
  if (!mutual_chap.empty()) {
    if (chap.empty()) return "--mutual-chap needs --chap as well";
    if (!split_user_secret(mutual_chap, out.mutual_chap_user, out.mutual_chap_secret))
      return "--mutual-chap wants USER:SECRET";
  }
  for (const std::string& name : allowed_initiators) {
    if (name.empty()) return "--allow-initiator wants an initiator name (iqn.... or eui....)";
    out.allowed_initiators.push_back(name);
  }
  return {};
}

}  // namespace ferry::mgmt
