// PreAuthGate: per-source refusal, eviction of the oldest pending connection, authenticated
// connections leaving the bounds (the failure it guards against: 63 silent TCP connections kept
// every real client out of a 64-connection server before any authentication, issue 15).
#include "datapath/pre_auth_gate.h"

#include <gtest/gtest.h>

namespace ferry {
namespace {

TEST(PreAuthGate, OneSourceCannotHoldMoreThanItsShare) {
  Reactor* r = reinterpret_cast<Reactor*>(uintptr_t(0x1000));  // never dereferenced by the gate
  PreAuthGate gate({/*pending_max=*/100, /*per_source_max=*/3});
  std::optional<PreAuthGate::Eviction> evict;
  for (uint64_t id = 1; id <= 3; ++id)
    EXPECT_EQ(gate.admit(id, "127.0.0.2", *r, evict), PreAuthGate::Admit::admitted);
  EXPECT_EQ(gate.admit(4, "127.0.0.2", *r, evict), PreAuthGate::Admit::source_limit);
  EXPECT_EQ(gate.admit(5, "127.0.0.1", *r, evict), PreAuthGate::Admit::admitted);
  EXPECT_EQ(gate.refused_source_limit(), 1u);
  gate.leave(2);  // authenticated: the source has room again
  EXPECT_EQ(gate.admit(6, "127.0.0.2", *r, evict), PreAuthGate::Admit::admitted);
  EXPECT_EQ(gate.pending(), 4u);
}

TEST(PreAuthGate, FullPoolEvictsTheOldestForTheNewcomer) {
  Reactor* r = reinterpret_cast<Reactor*>(uintptr_t(0x1000));
  PreAuthGate gate({/*pending_max=*/3, /*per_source_max=*/10});
  std::optional<PreAuthGate::Eviction> evict;
  for (uint64_t id = 10; id < 13; ++id) {
    ASSERT_EQ(gate.admit(id, "10.0.0." + std::to_string(id), *r, evict),
              PreAuthGate::Admit::admitted);
    EXPECT_FALSE(evict.has_value());
  }
  ASSERT_EQ(gate.admit(13, "127.0.0.1", *r, evict), PreAuthGate::Admit::admitted);
  ASSERT_TRUE(evict.has_value());
  EXPECT_EQ(evict->connection_id, 10u);
  EXPECT_EQ(evict->reactor, r);
  EXPECT_EQ(gate.pending(), 3u);
  EXPECT_EQ(gate.evicted(), 1u);
  gate.leave(10);  // the evicted one closing later is harmless
  gate.leave(10);
  EXPECT_EQ(gate.pending(), 3u);
}

TEST(PreAuthGate, AuthenticatedConnectionsDoNotCount) {
  Reactor* r = reinterpret_cast<Reactor*>(uintptr_t(0x1000));
  PreAuthGate gate({/*pending_max=*/2, /*per_source_max=*/2});
  std::optional<PreAuthGate::Eviction> evict;
  for (uint64_t id = 1; id <= 1000; ++id) {
    ASSERT_EQ(gate.admit(id, "127.0.0.1", *r, evict), PreAuthGate::Admit::admitted);
    EXPECT_FALSE(evict.has_value()) << id;
    gate.leave(id);  // logged in
  }
  EXPECT_EQ(gate.pending(), 0u);
}

TEST(PreAuthGate, UnixSocketPeersCountOnlyAgainstThePool) {
  Reactor* r = reinterpret_cast<Reactor*>(uintptr_t(0x1000));
  PreAuthGate gate({/*pending_max=*/5, /*per_source_max=*/1});
  std::optional<PreAuthGate::Eviction> evict;
  for (uint64_t id = 1; id <= 5; ++id)
    EXPECT_EQ(gate.admit(id, "", *r, evict), PreAuthGate::Admit::admitted);
  EXPECT_EQ(gate.refused_source_limit(), 0u);
}

}  // namespace
}  // namespace ferry
