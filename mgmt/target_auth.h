// The access rules of one iSCSI target from command-line values, shared by `ferry target` and
// `ferry cloud-edge` (one access model for every portal): CHAP, mutual CHAP and the initiator
// ACL. Start-up only, main thread.
#pragma once

#include <string>
#include <vector>

#include "gateway/iscsi/portal_config.h"

namespace ferry::mgmt {

// Fills `out` for target `iqn` from --chap USER:SECRET, --mutual-chap USER:SECRET and the
// --allow-initiator IQNs. Returns "" or what is wrong, naming the flag.
std::string make_target_auth(const std::string& iqn, const std::string& chap,
                             const std::string& mutual_chap,
                             const std::vector<std::string>& allowed_initiators,
                             iscsi::TargetAuthConfig& out);

}  // namespace ferry::mgmt
