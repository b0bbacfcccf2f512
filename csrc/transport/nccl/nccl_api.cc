#include "transport/nccl/nccl_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "common/errors.h"

#ifndef FUSECOMM_NCCL_BUILD_LIBDIR
#define FUSECOMM_NCCL_BUILD_LIBDIR ""
#endif

namespace fusecomm {

namespace {

// Directory of the shared object this code is in (fusecomm/_core*.so).
std::string ThisModuleDirectory() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&ThisModuleDirectory), &info) == 0 || !info.dli_fname) {
    return "";
  }
  std::string path = info.dli_fname;
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("FUSECOMM_NCCL_LIBRARY"); env && *env) out.push_back(env);
  const std::string module_dir = ThisModuleDirectory();
  if (!module_dir.empty()) out.push_back(module_dir + "/../nvidia/nccl/lib/libnccl.so.2");
  if (*FUSECOMM_NCCL_BUILD_LIBDIR) {
    out.push_back(std::string(FUSECOMM_NCCL_BUILD_LIBDIR) + "/libnccl.so.2");
  }
  out.push_back("libnccl.so.2");
  return out;
}

struct Loaded {
  NcclApi api;
  std::string error;
};

Loaded Load() {
  Loaded loaded;
  std::string tried;
  void* handle = nullptr;
  for (const std::string& candidate : Candidates()) {
    handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle) {
      loaded.api.path = candidate;
      break;
    }
    const char* why = dlerror();
    tried += "\n  " + candidate + ": " + (why ? why : "not loadable");
  }
  if (!handle) {
    loaded.error = "NCCL (libnccl.so.2) was not found; install it with `pip install "
                   "nvidia-nccl-cu13` or set FUSECOMM_NCCL_LIBRARY. Tried:" + tried;
    return loaded;
  }
  NcclApi& api = loaded.api;
#define FUSECOMM_NCCL_LOAD(name)                                                         \
  api.name = reinterpret_cast<decltype(api.name)>(dlsym(handle, #name));                 \
  if (!api.name) {                                                                       \
    loaded.error = api.path + " has no " #name " (NCCL 2.18 or newer is needed)";        \
    return loaded;                                                                       \
  }
  FUSECOMM_NCCL_FUNCTIONS(FUSECOMM_NCCL_LOAD)
#undef FUSECOMM_NCCL_LOAD
  return loaded;  // the handle stays open for the life of the process
}

const Loaded& LoadOnce() {
  static const Loaded* loaded = new Loaded(Load());
  return *loaded;
}

}  // namespace

const NcclApi& Nccl() {
  const Loaded& loaded = LoadOnce();
  if (!loaded.error.empty()) throw CollectiveError(loaded.error);
  return loaded.api;
}

std::string NcclVersionString() {
  const Loaded& loaded = LoadOnce();
  if (!loaded.error.empty()) return "not found: " + loaded.error;
  int version = 0;
  if (loaded.api.ncclGetVersion(&version) != ncclSuccess) return "unknown";
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return std::to_string(version / 10000) + "." + std::to_string(version / 100 % 100) + "." +
         std::to_string(version % 100);
}

}  // namespace fusecomm
