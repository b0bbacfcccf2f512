// splitmix64 for the C++ tests: deterministic, so a failure reproduces with the printed seed.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fusecomm_test {

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1p-53; }
  size_t Below(size_t n) { return static_cast<size_t>(Next() % n); }
};

}  // namespace fusecomm_test
