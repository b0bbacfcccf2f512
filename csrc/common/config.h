// Settings read from FUSECOMM_* environment variables at init. Every field can also be set
// from Python (init keyword arguments write the variables before the engine starts).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/types.h"

namespace fusecomm {

// How the engine groups ready all-reduces (FUSECOMM_FUSION_PLAN): pack whatever is ready up to
// the fusion threshold; one all-reduce per tensor; or merge consecutive gradients by MG-WFBP's
// plan learned from the step's measured ready times (engine/fusion_planner.h).
enum class FusionPlan { kThreshold, kLayerwise, kMgwfbp };
const char* FusionPlanName(FusionPlan plan);

struct Config {
  double cycle_time_ms = 1.0;                       // FUSECOMM_CYCLE_TIME_MS
  size_t fusion_threshold_bytes = 64ull << 20;      // FUSECOMM_FUSION_THRESHOLD
  size_t cache_capacity = 1024;                     // FUSECOMM_CACHE_CAPACITY (0 disables)
  AllreduceAlgorithm allreduce_algorithm = AllreduceAlgorithm::kAuto;  // FUSECOMM_ALLREDUCE_ALGORITHM
  int local_size = 0;                               // FUSECOMM_LOCAL_SIZE (0: real nodes)
  int torus_x = 0;                                  // FUSECOMM_TORUS_X (0: ranks per node)
  double stall_warning_seconds = 60.0;              // FUSECOMM_STALL_WARNING_SECONDS
  double stall_shutdown_seconds = 0.0;              // FUSECOMM_STALL_SHUTDOWN_SECONDS (0: off)
  std::string log_level = "warning";                // FUSECOMM_LOG_LEVEL
  double liveness_timeout_seconds = 15.0;           // FUSECOMM_LIVENESS_TIMEOUT_SECONDS (0: off)
  double data_timeout_seconds = 0.0;                // FUSECOMM_DATA_TIMEOUT_SECONDS (0: off)
  // How long init() waits in MPI start-up for ranks that have not arrived, when no launcher
  // reports them failed. Ranks import frameworks at different speeds: generous by default.
  double init_timeout_seconds = 60.0;               // FUSECOMM_INIT_TIMEOUT_SECONDS (0: off)
  std::string timeline_path;                        // FUSECOMM_TIMELINE
  bool timeline_mark_cycles = false;                // FUSECOMM_TIMELINE_MARK_CYCLES
  bool calibrate = true;                            // FUSECOMM_CALIBRATE (0: model defaults)
  std::string calibration_file;                     // FUSECOMM_CALIBRATION_FILE (cache)
  bool autotune = true;                             // FUSECOMM_AUTOTUNE (0: the model alone)
  // Quiet time after which every rank blocked on collectives missing elsewhere is a deadlock.
  double deadlock_seconds = 5.0;                    // FUSECOMM_DEADLOCK_SECONDS (0: off)
  FusionPlan fusion_plan = FusionPlan::kThreshold;  // FUSECOMM_FUSION_PLAN

  // Parses and checks every variable; throws InvalidArgument naming the first bad one.
  static Config FromEnvironment();
  // The checks that need the job's shape, run at init on every rank before any rank starts
  // work that others would wait on (rank 0 owns the calibration file). Throws InvalidArgument.
  void ValidateForJob(int rank, int size) const;
};

// FUSECOMM_GPU_TRANSPORT: auto, nccl or mpi (read again by the device path when it starts).
std::string GpuTransportSetting();

// Parses helpers shared by the config and tests; throw InvalidArgument naming the variable.
double EnvDouble(const char* name, double fallback);
int64_t EnvInt(const char* name, int64_t fallback);
std::string EnvString(const char* name, const std::string& fallback);

}  // namespace fusecomm
