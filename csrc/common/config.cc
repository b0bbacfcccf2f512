#include "common/config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <stdexcept>

#include "common/errors.h"

namespace fusecomm {

std::string EnvString(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return (value && *value) ? std::string(value) : fallback;
}

double EnvDouble(const char* name, double fallback) {
  std::string text = EnvString(name, "");
  if (text.empty()) return fallback;
  try {
    size_t used = 0;
    double value = std::stod(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  throw InvalidArgument(std::string(name) + "='" + text + "' is not a number");
}

int64_t EnvInt(const char* name, int64_t fallback) {
  std::string text = EnvString(name, "");
  if (text.empty()) return fallback;
  try {
    size_t used = 0;
    long long value = std::stoll(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  throw InvalidArgument(std::string(name) + "='" + text + "' is not an integer");
}

std::string GpuTransportSetting() {
  std::string value = EnvString("FUSECOMM_GPU_TRANSPORT", "auto");
  if (value != "auto" && value != "nccl" && value != "mpi") {
    throw InvalidArgument("FUSECOMM_GPU_TRANSPORT must be auto, nccl or mpi (got '" + value +
                          "')");
  }
  return value;
}

const char* FusionPlanName(FusionPlan plan) {
  switch (plan) {
    case FusionPlan::kThreshold: return "threshold";
    case FusionPlan::kLayerwise: return "layerwise";
    case FusionPlan::kMgwfbp: return "mgwfbp";
  }
  return "threshold";
}

namespace {
FusionPlan ParseFusionPlan(const std::string& value) {
  for (FusionPlan plan : {FusionPlan::kThreshold, FusionPlan::kLayerwise, FusionPlan::kMgwfbp}) {
    if (value == FusionPlanName(plan)) return plan;
  }
  throw InvalidArgument("FUSECOMM_FUSION_PLAN must be threshold, layerwise or mgwfbp (got '" +
                        value + "')");
}

bool IsDirectory(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

// Durations must be finite and sane: a huge or NaN wait overflows the thread library's clocks.
double CheckSeconds(const char* name, double value, double max) {
  if (!std::isfinite(value) || value < 0 || value > max) {
    throw InvalidArgument(std::string(name) + " must be a finite number between 0 and " +
                          std::to_string(static_cast<long long>(max)));
  }
  return value;
}
}  // namespace

Config Config::FromEnvironment() {
  Config c;
  c.cycle_time_ms = CheckSeconds("FUSECOMM_CYCLE_TIME_MS",
                                 EnvDouble("FUSECOMM_CYCLE_TIME_MS", c.cycle_time_ms), 60000);
  if (c.cycle_time_ms <= 0) throw InvalidArgument("FUSECOMM_CYCLE_TIME_MS must be positive");
  int64_t threshold = EnvInt("FUSECOMM_FUSION_THRESHOLD", static_cast<int64_t>(c.fusion_threshold_bytes));
  if (threshold < 0) throw InvalidArgument("FUSECOMM_FUSION_THRESHOLD must be >= 0");
  c.fusion_threshold_bytes = static_cast<size_t>(threshold);
  int64_t capacity = EnvInt("FUSECOMM_CACHE_CAPACITY", static_cast<int64_t>(c.cache_capacity));
  if (capacity < 0) throw InvalidArgument("FUSECOMM_CACHE_CAPACITY must be >= 0");
  c.cache_capacity = static_cast<size_t>(capacity);
  c.allreduce_algorithm =
      ParseAllreduceAlgorithm(EnvString("FUSECOMM_ALLREDUCE_ALGORITHM", "auto"));
  c.local_size = static_cast<int>(EnvInt("FUSECOMM_LOCAL_SIZE", 0));
  if (c.local_size < 0) throw InvalidArgument("FUSECOMM_LOCAL_SIZE must be >= 0");
  c.torus_x = static_cast<int>(EnvInt("FUSECOMM_TORUS_X", 0));
  if (c.torus_x < 0) throw InvalidArgument("FUSECOMM_TORUS_X must be >= 0");
  constexpr double kDay = 86400;
  c.stall_warning_seconds = CheckSeconds(
      "FUSECOMM_STALL_WARNING_SECONDS",
      EnvDouble("FUSECOMM_STALL_WARNING_SECONDS", c.stall_warning_seconds), kDay);
  c.stall_shutdown_seconds = CheckSeconds(
      "FUSECOMM_STALL_SHUTDOWN_SECONDS",
      EnvDouble("FUSECOMM_STALL_SHUTDOWN_SECONDS", c.stall_shutdown_seconds), kDay);
  c.log_level = EnvString("FUSECOMM_LOG_LEVEL", c.log_level);
  c.liveness_timeout_seconds = CheckSeconds(
      "FUSECOMM_LIVENESS_TIMEOUT_SECONDS",
      EnvDouble("FUSECOMM_LIVENESS_TIMEOUT_SECONDS", c.liveness_timeout_seconds), kDay);
  c.data_timeout_seconds = CheckSeconds(
      "FUSECOMM_DATA_TIMEOUT_SECONDS",
      EnvDouble("FUSECOMM_DATA_TIMEOUT_SECONDS", c.data_timeout_seconds), kDay);
  c.init_timeout_seconds = CheckSeconds(
      "FUSECOMM_INIT_TIMEOUT_SECONDS",
      EnvDouble("FUSECOMM_INIT_TIMEOUT_SECONDS", c.init_timeout_seconds), kDay);
  c.timeline_path = EnvString("FUSECOMM_TIMELINE", "");
  c.timeline_mark_cycles = EnvInt("FUSECOMM_TIMELINE_MARK_CYCLES", 0) != 0;
  c.calibrate = EnvInt("FUSECOMM_CALIBRATE", 1) != 0;
  c.autotune = EnvInt("FUSECOMM_AUTOTUNE", 1) != 0;
  c.calibration_file = EnvString("FUSECOMM_CALIBRATION_FILE", "");
  GpuTransportSetting();  // only device collectives use it, but a typo should fail at init
  c.deadlock_seconds = CheckSeconds(
      "FUSECOMM_DEADLOCK_SECONDS", EnvDouble("FUSECOMM_DEADLOCK_SECONDS", c.deadlock_seconds), kDay);
  c.fusion_plan = ParseFusionPlan(EnvString("FUSECOMM_FUSION_PLAN", "threshold"));
  return c;
}

void Config::ValidateForJob(int rank, int size) const {
  if (torus_x > size) {
    throw InvalidArgument("FUSECOMM_TORUS_X=" + std::to_string(torus_x) + " is wider than the " +
                          std::to_string(size) + " ranks of the job (a torus row holds at most " +
                          "every rank)");
  }
  // Rank 0 reads the calibration cache and writes it after measuring: a path it could not
  // write would otherwise be ignored silently and the measurement repeated at every start.
  if (rank == 0 && calibrate && !calibration_file.empty()) {
    const std::string& file = calibration_file;
    const bool exists = access(file.c_str(), F_OK) == 0;
    if (exists && IsDirectory(file)) {
      throw InvalidArgument("FUSECOMM_CALIBRATION_FILE='" + file + "' is a directory");
    }
    if (exists && access(file.c_str(), R_OK | W_OK) != 0) {
      throw InvalidArgument("FUSECOMM_CALIBRATION_FILE='" + file +
                            "' cannot be read and written by rank 0");
    }
    if (!exists) {
      const size_t slash = file.find_last_of('/');
      const std::string dir =
          slash == std::string::npos ? "." : (slash == 0 ? "/" : file.substr(0, slash));
      if (!IsDirectory(dir)) {
        throw InvalidArgument("FUSECOMM_CALIBRATION_FILE='" + file + "': the directory '" + dir +
                              "' does not exist on rank 0");
      }
      if (access(dir.c_str(), W_OK) != 0) {
        throw InvalidArgument("FUSECOMM_CALIBRATION_FILE='" + file + "': rank 0 cannot create " +
                              "files in '" + dir + "'");
      }
    }
  }
}

}  // namespace fusecomm
