// FERRY_ASSERT: invariant checks that stay on in release builds (bugs crash, loudly).
// Never use it on bytes that came from the network or a disk: validate those and return Errc.
#pragma once

#include <cstdio>
#include <cstdlib>

#define FERRY_ASSERT(cond)                                                                       \
  do {                                                                                           \
    if (__builtin_expect(!(cond), 0)) {                                                          \
      std::fprintf(stderr, "ferry: assertion failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                              \
    }                                                                                            \
  } while (0)
