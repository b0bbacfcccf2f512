#include "engine/settings_agreement.h"

#include <optional>
#include <sstream>

#include "common/errors.h"
#include "engine/rank_text.h"

namespace fusecomm {

namespace {

std::string Number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

// One "NAME=value" line per setting.
std::vector<char> Encode(const std::vector<std::pair<std::string, std::string>>& settings) {
  std::string text;
  for (const auto& [name, value] : settings) text += name + "=" + value + "\n";
  return {text.begin(), text.end()};
}

std::vector<std::pair<std::string, std::string>> Decode(const std::vector<char>& bytes) {
  std::vector<std::pair<std::string, std::string>> settings;
  std::istringstream in(std::string(bytes.begin(), bytes.end()));
  std::string line;
  while (std::getline(in, line)) {
    const size_t eq = line.find('=');
    if (eq == std::string::npos) throw CollectiveError("corrupt settings message from a peer rank");
    settings.emplace_back(line.substr(0, eq), line.substr(eq + 1));
  }
  return settings;
}

// Rank 0's side: "" when every rank agrees, else the message every rank raises.
std::string Disagreements(const std::vector<std::vector<char>>& reports) {
  std::vector<std::vector<std::pair<std::string, std::string>>> per_rank;
  for (const auto& report : reports) per_rank.push_back(Decode(report));
  std::ostringstream msg;
  const auto& mine = per_rank[0];
  for (size_t i = 0; i < mine.size(); ++i) {
    std::vector<std::optional<std::string>> values(per_rank.size());
    bool differ = false;
    for (size_t r = 0; r < per_rank.size(); ++r) {
      // Every rank runs the same build, so the lists line up; a shorter one is a mismatch too.
      values[r] = i < per_rank[r].size() && per_rank[r][i].first == mine[i].first
                      ? per_rank[r][i].second
                      : std::string("(unknown)");
      differ |= *values[r] != mine[i].second;
    }
    if (differ) {
      msg << (msg.tellp() > 0 ? ", " : "") << mine[i].first << " ("
          << DescribeValuesByRank(values, ": ") << ")";
    }
  }
  const std::string found = msg.str();
  if (found.empty()) return "";
  return "fusecomm settings differ between ranks (each must be the same on every rank): " + found;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> SettingsThatMustAgree(const Config& c) {
  return {
      {"FUSECOMM_FUSION_THRESHOLD", std::to_string(c.fusion_threshold_bytes)},
      // Ranks that group all-reduces differently run different collectives: a hang.
      {"FUSECOMM_FUSION_PLAN", FusionPlanName(c.fusion_plan)},
      {"FUSECOMM_CACHE_CAPACITY", std::to_string(c.cache_capacity)},
      {"FUSECOMM_ALLREDUCE_ALGORITHM", AllreduceAlgorithmName(c.allreduce_algorithm)},
      {"FUSECOMM_LOCAL_SIZE", std::to_string(c.local_size)},
      {"FUSECOMM_TORUS_X", std::to_string(c.torus_x)},
      // Any rank's stall shutdown stops everyone: the limit must be the job's, not a rank's.
      {"FUSECOMM_STALL_SHUTDOWN_SECONDS", Number(c.stall_shutdown_seconds)},
      // A rank without the monitor sends no heartbeats: its peers would declare it dead.
      {"FUSECOMM_LIVENESS_TIMEOUT_SECONDS", Number(c.liveness_timeout_seconds)},
      {"FUSECOMM_DEADLOCK_SECONDS", Number(c.deadlock_seconds)},
      // Calibration and auto's races are collectives every rank must take part in.
      {"FUSECOMM_CALIBRATE", c.calibrate ? "1" : "0"},
      {"FUSECOMM_AUTOTUNE", c.autotune ? "1" : "0"},
      // Device collectives: every rank must pick the same transport.
      {"FUSECOMM_GPU_TRANSPORT", EnvString("FUSECOMM_GPU_TRANSPORT", "auto")},
  };
}

std::string AgreeOnSettings(ControlChannel& channel, const Config& config) {
  auto reports = channel.GatherToRoot(Encode(SettingsThatMustAgree(config)));
  std::vector<char> verdict;
  if (channel.rank() == 0) {
    std::string text = Disagreements(reports);
    verdict.assign(text.begin(), text.end());
  }
  channel.BroadcastFromRoot(verdict);
  return std::string(verdict.begin(), verdict.end());
}

}  // namespace fusecomm
