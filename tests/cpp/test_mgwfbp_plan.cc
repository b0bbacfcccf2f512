// Standalone test of the MG-WFBP planner (csrc/engine/mgwfbp_plan.h) over synthetic timings:
// every plan is a partition into consecutive groups, never predicted slower than layer-wise
// all-reduce or one merged all-reduce, never faster than the optimum found by trying every
// partition, equal to it for two layers (where the paper's rule is exactly the optimum), and
// the paper's two regimes (link-bound: merge everything; compute-bound: layer by layer).
// Build: g++ -std=c++17 -O2 -Wall -Wextra -Icsrc csrc/engine/mgwfbp_plan.cc
//        tests/cpp/test_mgwfbp_plan.cc -o /tmp/test_mgwfbp_plan
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/errors.h"
#include "engine/mgwfbp_plan.h"
#include "test_rng.h"
#include "test_check.h"

using fusecomm::AllreduceSeconds;
using fusecomm::GradientTiming;
using fusecomm::PlanMergedGradients;
using fusecomm::PredictedStepEnd;
using Groups = std::vector<std::vector<size_t>>;

namespace {

using fusecomm_test::Check;

AllreduceSeconds Linear(double alpha, double beta) {
  return [alpha, beta](size_t bytes) { return alpha + beta * static_cast<double>(bytes); };
}

bool IsConsecutivePartition(const Groups& groups, size_t n) {
  size_t next = 0;
  for (const auto& g : groups) {
    if (g.empty()) return false;
    for (size_t i : g) {
      if (i != next++) return false;
    }
  }
  return next == n;
}

// Every way to cut n gradients into consecutive groups (bit i set: a cut after gradient i).
double BruteForceBest(const std::vector<GradientTiming>& grads, const AllreduceSeconds& cost) {
  const size_t n = grads.size();
  double best = INFINITY;
  for (uint64_t cuts = 0; cuts < (uint64_t{1} << (n - 1)); ++cuts) {
    Groups groups(1);
    for (size_t i = 0; i < n; ++i) {
      groups.back().push_back(i);
      if (i + 1 < n && ((cuts >> i) & 1)) groups.emplace_back();
    }
    best = std::min(best, PredictedStepEnd(groups, grads, cost));
  }
  return best;
}

std::string Describe(uint64_t seed, const std::vector<GradientTiming>& grads, double alpha,
                     double beta) {
  std::string s = "seed " + std::to_string(seed) + " alpha " + std::to_string(alpha) + " beta " +
                  std::to_string(beta) + ":";
  for (const auto& g : grads) {
    s += " (" + std::to_string(g.ready_seconds) + " s, " + std::to_string(g.bytes) + " B)";
  }
  return s;
}

std::vector<GradientTiming> RandomStep(fusecomm_test::Rng& rng, size_t n) {
  static const size_t kSizes[] = {4, 1024, 65536, 1 << 20, 16 << 20};
  std::vector<GradientTiming> grads(n);
  double t = 0;
  for (size_t i = 0; i < n; ++i) {
    // Bursts (several gradients at once) and gaps from microseconds to milliseconds.
    if (i > 0 && rng.Below(3) != 0) t += 1e-6 * std::pow(10.0, 4 * rng.Uniform());
    grads[i] = {t, kSizes[rng.Below(5)]};
  }
  return grads;
}

void TestRandomAgainstReferences() {
  const double alphas[] = {2e-6, 5e-5, 9e-4};
  const double betas[] = {1e-10, 7.4e-10};
  int optimal = 0, cases = 0;
  double worst = 1;
  for (uint64_t seed = 1; seed <= 3000; ++seed) {
    fusecomm_test::Rng rng(seed);
    const size_t n = 1 + rng.Below(10);
    const double alpha = alphas[rng.Below(3)], beta = betas[rng.Below(2)];
    const auto cost = Linear(alpha, beta);
    const auto grads = RandomStep(rng, n);
    const Groups plan = PlanMergedGradients(grads, alpha, cost);
    const std::string what = Describe(seed, grads, alpha, beta);
    if (!IsConsecutivePartition(plan, n)) {
      Check(false, "not a partition into consecutive groups: " + what);
      continue;
    }
    Groups layerwise, merged(1);
    for (size_t i = 0; i < n; ++i) {
      layerwise.push_back({i});
      merged[0].push_back(i);
    }
    const double planned = PredictedStepEnd(plan, grads, cost);
    const double tol = 1e-12 + 1e-9 * planned;
    Check(planned <= PredictedStepEnd(layerwise, grads, cost) + tol,
          "slower than layer-wise: " + what);
    Check(planned <= PredictedStepEnd(merged, grads, cost) + tol,
          "slower than one merged all-reduce: " + what);
    const double best = BruteForceBest(grads, cost);
    Check(planned >= best - tol, "faster than the best partition (model broken): " + what);
    if (n == 2) Check(planned <= best + tol, "two layers: not the optimum: " + what);
    ++cases;
    if (planned <= best + tol) ++optimal;
    worst = std::max(worst, planned / best);
  }
  // The paper's rule is greedy: report how far it is from the optimum on these inputs.
  std::printf("random steps: %d of %d plans optimal, worst %.3fx the optimum\n", optimal, cases,
              worst);
  Check(optimal * 2 > cases, "the rule finds the optimum in fewer than half the random steps");
}

void TestRegimes() {
  const auto cost = Linear(1e-4, 1e-9);  // 100 us start-up, 1 GB/s
  // Link-bound: 8 gradients of 1 MiB (1.1 ms each) ready 10 us apart: one all-reduce.
  std::vector<GradientTiming> burst;
  for (size_t i = 0; i < 8; ++i) burst.push_back({1e-5 * i, 1 << 20});
  Check(PlanMergedGradients(burst, 1e-4, cost).size() == 1, "link-bound step not merged");
  // Compute-bound: 4 KiB gradients (104 us each) ready 1 ms apart: layer by layer.
  std::vector<GradientTiming> sparse;
  for (size_t i = 0; i < 8; ++i) sparse.push_back({1e-3 * i, 4096});
  Check(PlanMergedGradients(sparse, 1e-4, cost).size() == 8, "compute-bound step merged");
  // The next gradient comes 50 us after this one's all-reduce could start (< start-up): merge;
  // 150 us after (> start-up, the link idle): do not wait for it.
  Check(PlanMergedGradients({{0, 1 << 20}, {5e-5, 4}}, 1e-4, cost).size() == 1,
        "short wait not merged");
  Check(PlanMergedGradients({{0, 1 << 20}, {1.5e-4, 4}}, 1e-4, cost).size() == 2,
        "wait longer than a start-up merged");
  Check(PlanMergedGradients({}, 1e-4, cost).empty(), "empty step");
  Check(PlanMergedGradients({{0, 8}}, 1e-4, cost) == Groups{{0}}, "one gradient");
}

void TestErrors() {
  const auto cost = Linear(1e-5, 1e-10);
  bool threw = false;
  try {
    PlanMergedGradients({{1e-3, 8}, {0, 8}}, 1e-5, cost);
  } catch (const fusecomm::InvalidArgument& e) {
    threw = std::string(e.what()).find("order they become ready") != std::string::npos;
  }
  Check(threw, "decreasing ready times accepted");
  threw = false;
  try {
    PlanMergedGradients({{0, 8}}, -1, cost);
  } catch (const fusecomm::InvalidArgument&) {
    threw = true;
  }
  Check(threw, "negative start-up cost accepted");
}

}  // namespace

int main() {
  TestRandomAgainstReferences();
  TestRegimes();
  TestErrors();
  return fusecomm_test::Summary("mgwfbp plan: ");
}
