// Portal configuration shared by login, discovery and the server: which targets exist, where
// they are reached, and what authentication each requires. Immutable once the server starts.
#pragma once

#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::iscsi {

struct TargetAuthConfig {
  std::string iqn;
  std::string alias;
  // CHAP the initiator must pass (empty user: no authentication required).
  std::string chap_user;
  std::string chap_secret;
  // Mutual CHAP: the name/secret the target answers the initiator's challenge with.
  std::string mutual_chap_user;
  std::string mutual_chap_secret;
  // Initiator ACL: the initiator names (compared case-insensitively) that may log in to this
  // target; empty: any. Others are refused with "authorization failure" (0x0202).
  std::vector<std::string> allowed_initiators;

  bool chap_required() const noexcept { return !chap_user.empty(); }
  bool initiator_allowed(std::string_view name) const noexcept {
    if (allowed_initiators.empty()) return true;
    for (const auto& a : allowed_initiators) {
      if (a.size() != name.size()) continue;
      bool same = true;
      for (size_t i = 0; i < a.size() && same; ++i)
        same = std::tolower(static_cast<unsigned char>(a[i])) ==
               std::tolower(static_cast<unsigned char>(name[i]));
      if (same) return true;
    }
    return false;
  }
};

struct PortalConfig {
  // "ADDRESS:PORT,TPGT" as returned in SendTargets' TargetAddress.
  std::string portal_address = "127.0.0.1:3260,1";
  uint16_t target_portal_group_tag = 1;
  std::vector<TargetAuthConfig> targets;
  // Discovery sessions: CHAP (empty user: open) and the mutual CHAP answer.
  std::string discovery_chap_user;
  std::string discovery_chap_secret;
  std::string discovery_mutual_chap_user;
  std::string discovery_mutual_chap_secret;
  // What the target declares / accepts in operational negotiation.
  uint32_t max_recv_data_segment_length = 256 * 1024;  // we receive at most this per PDU
  uint32_t max_burst_length_max = 16 * 1024 * 1024;
  uint32_t first_burst_length_max = 256 * 1024;
  uint32_t max_outstanding_r2t_max = 16;

  const TargetAuthConfig* find_target(std::string_view iqn) const noexcept {
    for (const auto& t : targets)
      if (t.iqn == iqn) return &t;
    return nullptr;
  }
};

}  // namespace ferry::iscsi
