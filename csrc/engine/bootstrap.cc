#include "engine/bootstrap.h"

#include <fstream>
#include <vector>

#include "collectives/auto_tuner.h"
#include "collectives/cost_model.h"
#include "collectives/dispatch.h"
#include "common/logging.h"
#include "transport/split_topology.h"

namespace fusecomm {

namespace {

// The cost model: from the cache file when rank 0 finds one, else measured now (and cached
// by rank 0 when a file is named). Rank 0 decides for everyone, so all ranks do the same.
// The file describes the global process set (its MPI_Allreduce times depend on the rank
// count); other process sets measure their own.
CostModel LoadOrCalibrate(int process_set_id, const Topology& topo, const Config& config) {
  Comm& comm = *topo.global;
  if (!config.calibrate) return CostModel{};
  const std::string file = process_set_id == 0 ? config.calibration_file : std::string();
  std::vector<char> text(4096, 0);
  if (comm.rank() == 0 && !file.empty()) {
    std::ifstream in(file);
    in.read(text.data(), static_cast<std::streamsize>(text.size() - 1));
  }
  comm.NativeBroadcast(text.data(), text.size(), 0);
  CostModel model;
  if (CostModel::FromText(text.data(), &model)) return model;
  model = CalibrateCostModel(topo);
  if (comm.rank() == 0 && !file.empty()) {
    std::ofstream out(file);
    out << model.ToText();
    // Checked at init (Config::ValidateForJob); a failure now is only worth a warning.
    if (!out) FUSECOMM_LOG(kWarning, "could not write the calibration file '" << file << "'");
  }
  return model;
}

}  // namespace

std::string AgreeOnInitErrors(ControlChannel& channel, const std::string& mine) {
  const auto reports = channel.GatherToRoot(std::vector<char>(mine.begin(), mine.end()));
  std::vector<char> verdict;
  if (channel.rank() == 0) {
    std::string failures;
    int failed = 0;
    for (size_t r = 0; r < reports.size(); ++r) {
      if (reports[r].empty()) continue;
      failures += (failed++ ? "; rank " : "rank ") + std::to_string(r) + ": " +
                  std::string(reports[r].begin(), reports[r].end());
    }
    if (failed) {
      const std::string text = "init() failed on " + failures;
      verdict.assign(text.begin(), text.end());
    }
  }
  channel.BroadcastFromRoot(verdict);
  return std::string(verdict.begin(), verdict.end());
}

std::unique_ptr<ProcessSetWorker> StartProcessSet(int id, ProcessGroup& group,
                                                  const Config& config, Timeline* timeline) {
  auto control = group.NewControlChannel();
  auto data = group.NewDataComm();
  Topology topo = SplitTopology(*data, group.NodeOfEachRank(config.local_size), config.torus_x);
  topo.global = data.get();
  AllreduceSelector selector(LoadOrCalibrate(id, topo, config),
                             config.autotune ? std::make_shared<AutoTuner>() : nullptr);
  return std::make_unique<ProcessSetWorker>(id, std::move(control), std::move(data),
                                            std::move(topo), std::move(selector), config,
                                            timeline);
}

}  // namespace fusecomm
