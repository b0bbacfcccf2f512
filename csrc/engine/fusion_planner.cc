#include "engine/fusion_planner.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <tuple>

#include "common/logging.h"

namespace fusecomm {

namespace {

bool Fusable(const Response& r, size_t threshold) {
  return r.error.empty() && r.spec.op_type == OpType::kAllreduce &&
         r.spec.num_bytes() <= threshold;
}

// A gradient as MG-WFBP sees it: an all-reduce that will run.
bool IsGradient(const Response& r) { return r.error.empty() && r.spec.op_type == OpType::kAllreduce; }

bool SameKind(const TensorSpec& a, const TensorSpec& b) {
  return std::tie(a.dtype, a.reduce_op, a.prescale, a.postscale, a.device, a.algorithm) ==
         std::tie(b.dtype, b.reduce_op, b.prescale, b.postscale, b.device, b.algorithm);
}

}  // namespace

std::vector<std::vector<size_t>> PlanFusion(const std::vector<Response>& responses,
                                            size_t threshold_bytes) {
  std::vector<std::vector<size_t>> groups;
  std::vector<size_t> group_bytes;
  std::vector<size_t> open;  // groups still accepting members
  for (size_t i = 0; i < responses.size(); ++i) {
    const Response& r = responses[i];
    if (!Fusable(r, threshold_bytes)) {
      groups.push_back({i});
      group_bytes.push_back(0);
      continue;
    }
    size_t bytes = r.spec.num_bytes();
    bool placed = false;
    for (size_t g : open) {
      const TensorSpec& first = responses[groups[g][0]].spec;
      if (SameKind(first, r.spec) && group_bytes[g] + bytes <= threshold_bytes) {
        groups[g].push_back(i);
        group_bytes[g] += bytes;
        placed = true;
        break;
      }
    }
    if (!placed) {
      open.push_back(groups.size());
      groups.push_back({i});
      group_bytes.push_back(bytes);
    }
  }
  return groups;
}

FusionScheduler::FusionScheduler(FusionPlan kind, size_t threshold_bytes, double cycle_time_ms,
                                 int ranks, AllreduceSeconds allreduce_seconds,
                                 AllreduceMax agree)
    : kind_(kind),
      threshold_bytes_(threshold_bytes),
      cycle_time_ms_(cycle_time_ms),
      ranks_(ranks),
      allreduce_seconds_(std::move(allreduce_seconds)),
      agree_(std::move(agree)) {
  state_.kind = FusionPlanName(kind);
}

double FusionScheduler::StartupSeconds() const {
  // The cost of the smallest all-reduce: what one all-reduce fewer saves (the model predicts
  // nothing at all for an empty one).
  return allreduce_seconds_(1);
}

FusionScheduler::Batch FusionScheduler::Schedule(std::vector<Ready> ready) {
  ++cycle_;
  Batch batch;
  if (kind_ == FusionPlan::kMgwfbp) {
    try {
      for (const Ready& r : ready) {
        if (IsGradient(r.response)) Observe(r.response, r.request.submitted);
      }
    } catch (...) {
      // The ranks' agreement on timings failed: keep the requests where shutdown fails them.
      for (Ready& r : ready) held_.push_back({std::move(r.response), std::move(r.request), cycle_});
      throw;
    }
  }
  auto run_now = [&batch](Response response, Request request) {
    batch.responses.push_back(std::move(response));
    batch.requests.push_back(std::move(request));
  };
  if (!planned_ || plan_changed_) {
    // No plan (yet), or a new one: what was held for the old plan runs now.
    plan_changed_ = false;
    for (Held& h : held_) run_now(std::move(h.response), std::move(h.request));
    held_.clear();
  }
  for (Ready& r : ready) {
    if (planned_ && IsGradient(r.response) && bucket_of_.count(r.response.spec.name)) {
      held_.push_back({std::move(r.response), std::move(r.request), cycle_});
    } else {
      run_now(std::move(r.response), std::move(r.request));
    }
  }
  if (!held_.empty()) {
    // A bucket runs once every member is here, or once its oldest member has waited its limit.
    std::vector<size_t> present(buckets_.size(), 0);
    std::vector<uint64_t> oldest(buckets_.size(), cycle_);
    for (const Held& h : held_) {
      const size_t b = bucket_of_.at(h.response.spec.name);
      ++present[b];
      oldest[b] = std::min(oldest[b], h.since_cycle);
    }
    std::vector<Held> still_held;
    for (Held& h : held_) {
      const size_t b = bucket_of_.at(h.response.spec.name);
      if (present[b] == buckets_[b].size() || cycle_ - oldest[b] >= hold_limit_cycles_[b]) {
        run_now(std::move(h.response), std::move(h.request));
      } else {
        still_held.push_back(std::move(h));
      }
    }
    held_.swap(still_held);
  }
  if (kind_ == FusionPlan::kLayerwise) {
    for (size_t i = 0; i < batch.responses.size(); ++i) batch.groups.push_back({i});
  } else {
    // MG-WFBP's rule at run time too: buckets (and other all-reduces) ready together merge.
    batch.groups = PlanFusion(batch.responses, threshold_bytes_);
  }
  return batch;
}

std::vector<Request> FusionScheduler::TakeHeld() {
  std::vector<Request> out;
  for (Held& h : held_) out.push_back(std::move(h.request));
  held_.clear();
  return out;
}

void FusionScheduler::Observe(const Response& response, Clock::time_point submitted) {
  // A step is the repeating sequence of gradient names: a name seen again starts the next one.
  if (step_names_.count(response.spec.name)) CloseStep();
  step_names_.insert(response.spec.name);
  step_.push_back({response.spec.name, response.spec.num_bytes(), submitted});
}

void FusionScheduler::CloseStep() {
  ++steps_seen_;
  Signature signature;
  Clock::time_point first = step_.front().submitted;
  for (const StepTensor& t : step_) {
    signature.emplace_back(t.name, t.bytes);
    first = std::min(first, t.submitted);
  }
  std::sort(signature.begin(), signature.end());
  std::vector<double> offsets(signature.size());
  for (const StepTensor& t : step_) {
    const size_t at = std::lower_bound(signature.begin(), signature.end(),
                                       std::make_pair(t.name, t.bytes)) - signature.begin();
    offsets[at] = std::chrono::duration<double>(t.submitted - first).count();
  }
  step_.clear();
  step_names_.clear();

  if (signature != signature_) {
    // Another composition (a different model, an evaluation step): learn it afresh.
    if (planned_) DropPlan();
    signature_ = std::move(signature);
    same_steps_ = 1;
    step_offsets_.clear();
    Publish();
    return;
  }
  // The first step of a composition is a warm-up (negotiation through the coordinator).
  if (++same_steps_ < 2) return;
  step_offsets_.push_back(std::move(offsets));
  const int measured = static_cast<int>(step_offsets_.size());
  if (!planned_ && measured == kLearnSteps) {
    MakePlan(AgreedOffsets());
  } else if (planned_ && measured == kDriftCheckSteps) {
    std::vector<double> offsets_now = AgreedOffsets();
    double moved = 0;
    for (size_t i = 0; i < offsets_now.size(); ++i) {
      moved += std::fabs(offsets_now[i] - planned_offsets_[i]);
    }
    moved /= std::max<size_t>(offsets_now.size(), 1);
    const double span = std::max({planned_span_, StartupSeconds(), 1e-6});
    if (moved > kReplanDrift * span) {
      FUSECOMM_LOG(kDebug, "MG-WFBP: ready times moved by " << moved * 1e3 << " ms on average ("
                                                            << 100 * moved / span
                                                            << "% of the step): re-planning");
      MakePlan(offsets_now);
    }
  }
  Publish();
}

std::vector<double> FusionScheduler::AgreedOffsets() {
  // The median step on this rank (a step stretched by a pause, a page fault or a busy core
  // does not shape the plan), then the latest rank: the all-reduce waits for it.
  std::vector<double> median(signature_.size());
  std::vector<double> values(step_offsets_.size());
  for (size_t i = 0; i < median.size(); ++i) {
    for (size_t s = 0; s < values.size(); ++s) values[s] = step_offsets_[s][i];
    std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
    median[i] = values[values.size() / 2];
  }
  agree_(median);
  step_offsets_.clear();
  return median;
}

void FusionScheduler::MakePlan(const std::vector<double>& offsets) {
  // Order by agreed ready time (ties by name): the same order on every rank.
  std::vector<size_t> order(signature_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::tie(offsets[a], signature_[a].first) < std::tie(offsets[b], signature_[b].first);
  });
  std::vector<GradientTiming> timings;
  for (size_t i : order) timings.push_back({offsets[i], signature_[i].second});
  const auto groups = PlanMergedGradients(timings, StartupSeconds(), allreduce_seconds_);
  buckets_.clear();
  hold_limit_cycles_.clear();
  bucket_of_.clear();
  for (const auto& group : groups) {
    std::vector<std::string> names;
    for (size_t k : group) {
      bucket_of_[signature_[order[k]].first] = buckets_.size();
      names.push_back(signature_[order[k]].first);
    }
    // Hold the first member at most twice the planned wait for the last, counted in cycles:
    // an idle cycle ends within the cycle time, and each submission on any rank may add one
    // (the members' own, twice over), plus a few for negotiation. Never past 1 s of idle cycles.
    const double wait_ms = 1e3 * (timings[group.back()].ready_seconds -
                                  timings[group.front()].ready_seconds);
    const double busy = 4.0 + 2.0 * ranks_ * static_cast<double>(group.size());
    hold_limit_cycles_.push_back(static_cast<uint64_t>(
        busy + std::ceil(std::min(2 * wait_ms, 1000.0) / cycle_time_ms_)));
    buckets_.push_back(std::move(names));
  }
  planned_offsets_ = offsets;
  planned_span_ = timings.empty() ? 0 : timings.back().ready_seconds;
  planned_ = true;
  plan_changed_ = true;
  ++plans_made_;
  if (LogEnabled(LogLevel::kDebug)) {
    std::ostringstream text;
    for (const auto& group : groups) {
      text << " [";
      for (size_t k : group) {
        text << " " << signature_[order[k]].first << " at " << 1e3 * timings[k].ready_seconds
             << " ms";
      }
      text << " ]";
    }
    FUSECOMM_LOG(kDebug, "MG-WFBP plan " << plans_made_ << " (start-up "
                                         << 1e6 * StartupSeconds() << " us):" << text.str());
  }
}

void FusionScheduler::DropPlan() {
  planned_ = false;
  plan_changed_ = true;
  buckets_.clear();
  hold_limit_cycles_.clear();
  bucket_of_.clear();
}

void FusionScheduler::Publish() {
  std::lock_guard<std::mutex> lock(state_mutex_);
  state_.buckets = buckets_;
  state_.plans_made = plans_made_;
  state_.steps_seen = steps_seen_;
}

FusionPlanState FusionScheduler::State() const {
  std::lock_guard<std::mutex> lock(state_mutex_);
  return state_;
}

}  // namespace fusecomm
