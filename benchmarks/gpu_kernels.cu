// Bandwidth of CudaBatchedScaledCopy, the fusion-buffer copy-in (many tensors -> one buffer,
// optionally pre-scaled and cast to float16/bfloat16) and copy-out (buffer -> tensors,
// post-scaled and cast back), against one cudaMemcpyAsync device-to-device moving the same
// bytes on the same GPU. Built and run by benchmarks/gpu_kernels.py; by hand:
//   nvcc -std=c++17 -O2 -Icsrc -arch=native csrc/reduce/cuda_kernels.cu csrc/common/types.cc
//        benchmarks/gpu_kernels.cu -o gpu_kernels
//   gpu_kernels [--total-mib 64,256] [--tensors 100] [--repeats 30] [--warmup 5] [--seed 1]
// Prints one JSON object per line: the device first, then one per case.
//
// Fraction of memcpy = (time of a cudaMemcpyAsync whose read + write traffic equals the
// case's) / (the case's time): 1.0 means the batched kernel moves bytes as fast as the copy
// engine path of the driver does. A cast reads 4 and writes 2 bytes per element, so it is
// compared with a memcpy of 3 bytes per element.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "common/types.h"
#include "reduce/cuda_kernels.h"

using namespace fusecomm;

namespace {

void Cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

struct Options {
  std::vector<size_t> total_mib = {64, 256};
  int tensors = 100;
  int repeats = 30;
  int warmup = 5;
  uint64_t seed = 1;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const char* value = argv[i + 1];
    if (key == "--total-mib") {
      o.total_mib.clear();
      const std::string list = value;
      for (size_t pos = 0; pos < list.size();) {
        size_t comma = list.find(',', pos);
        if (comma == std::string::npos) comma = list.size();
        o.total_mib.push_back(std::stoull(list.substr(pos, comma - pos)));
        pos = comma + 1;
      }
    } else if (key == "--tensors") {
      o.tensors = std::atoi(value);
    } else if (key == "--repeats") {
      o.repeats = std::atoi(value);
    } else if (key == "--warmup") {
      o.warmup = std::atoi(value);
    } else if (key == "--seed") {
      o.seed = std::strtoull(value, nullptr, 0);
    } else {
      std::fprintf(stderr, "unknown option %s\n", key.c_str());
      std::exit(2);
    }
  }
  if (o.tensors < 1 || o.repeats < 1 || o.warmup < 0 || o.total_mib.empty()) {
    std::fprintf(stderr, "bad options\n");
    std::exit(2);
  }
  return o;
}

// Median GPU time in microseconds of the work `enqueue` puts on `stream`.
template <typename Enqueue>
double MedianUs(cudaStream_t stream, const Options& o, Enqueue enqueue) {
  for (int i = 0; i < o.warmup; ++i) enqueue();
  cudaEvent_t start, stop;
  Cuda(cudaEventCreate(&start), "cudaEventCreate");
  Cuda(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<double> us;
  for (int i = 0; i < o.repeats; ++i) {
    Cuda(cudaEventRecord(start, stream), "cudaEventRecord");
    enqueue();
    Cuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    Cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    Cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    us.push_back(ms * 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

size_t RoundUp(size_t x, size_t to) { return (x + to - 1) / to * to; }

// Element counts of `n` tensors, log-uniform from 1 Ki to 4 Mi elements, scaled to `total`.
std::vector<size_t> TensorCounts(size_t total, int n, uint64_t seed) {
  std::vector<double> weights;
  uint64_t s = seed;
  for (int i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const double u = static_cast<double>(s >> 11) * 0x1p-53;
    weights.push_back(std::exp2(10 + 12 * u));
  }
  double sum = 0;
  for (double w : weights) sum += w;
  std::vector<size_t> counts;
  size_t used = 0;
  for (int i = 0; i < n; ++i) {
    size_t c = i + 1 < n ? static_cast<size_t>(weights[i] / sum * total)
                         : (total > used ? total - used : 1);
    c = std::max<size_t>(c, 1);
    counts.push_back(c);
    used += c;
  }
  return counts;
}

struct Case {
  const char* direction;  // "copy-in": tensors -> fusion buffer; "copy-out": the reverse
  DataType buffer_dtype;  // the fusion buffer's type; tensors are float32
  double factor;
};

int Run(const Options& o) {
  int device = 0;
  Cuda(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  Cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  std::printf("{\"device\": \"%s\", \"sm\": \"%d%d\", \"multiprocessors\": %d, "
              "\"cuda_runtime\": %d, \"cuda_driver\": %d}\n",
              prop.name, prop.major, prop.minor, prop.multiProcessorCount, runtime, driver);
  cudaStream_t stream;
  Cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");

  const Case kCases[] = {
      {"copy-in", DataType::kFloat32, 1.0},    {"copy-in", DataType::kFloat32, 0.5},
      {"copy-in", DataType::kFloat16, 1.0},    {"copy-in", DataType::kBFloat16, 1.0},
      {"copy-out", DataType::kFloat32, 1.0},   {"copy-out", DataType::kFloat32, 0.125},
      {"copy-out", DataType::kFloat16, 0.125}, {"copy-out", DataType::kBFloat16, 0.125},
  };

  for (size_t total_mib : o.total_mib) {
    const std::vector<size_t> counts =
        TensorCounts((total_mib << 20) / sizeof(float), o.tensors, o.seed);
    size_t total_elems = 0;
    for (size_t c : counts) total_elems += c;
    // Tensors start on 256 bytes as framework allocators place them; tensors in the fusion
    // buffer on 64 bytes, the alignment the engine keeps (the kernels need 16 to vectorise).
    std::vector<size_t> tensor_offsets, buffer_offsets;
    size_t tensor_bytes = 0, buffer_elems = 0;
    for (size_t c : counts) {
      tensor_offsets.push_back(tensor_bytes);
      tensor_bytes = RoundUp(tensor_bytes + c * sizeof(float), 256);
      buffer_offsets.push_back(buffer_elems);
      buffer_elems = RoundUp(buffer_elems + c, 64 / sizeof(uint16_t));
    }
    uint8_t *tensors = nullptr, *buffer = nullptr, *copy_src = nullptr, *copy_dst = nullptr;
    Cuda(cudaMalloc(&tensors, tensor_bytes), "cudaMalloc");
    Cuda(cudaMalloc(&buffer, buffer_elems * sizeof(float)), "cudaMalloc");
    Cuda(cudaMalloc(&copy_src, total_elems * sizeof(float)), "cudaMalloc");
    Cuda(cudaMalloc(&copy_dst, total_elems * sizeof(float)), "cudaMalloc");
    Cuda(cudaMemset(tensors, 0x3c, tensor_bytes), "cudaMemset");
    Cuda(cudaMemset(buffer, 0x3c, buffer_elems * sizeof(float)), "cudaMemset");
    Cuda(cudaMemset(copy_src, 0x3c, total_elems * sizeof(float)), "cudaMemset");

    std::map<size_t, double> memcpy_us;  // by bytes
    auto memcpy_time = [&](size_t bytes) {
      auto it = memcpy_us.find(bytes);
      if (it != memcpy_us.end()) return it->second;
      const double us = MedianUs(stream, o, [&] {
        Cuda(cudaMemcpyAsync(copy_dst, copy_src, bytes, cudaMemcpyDeviceToDevice, stream),
             "cudaMemcpyAsync");
      });
      return memcpy_us[bytes] = us;
    };

    for (const Case& c : kCases) {
      const bool in = std::strcmp(c.direction, "copy-in") == 0;
      const size_t buffer_elem = DataTypeSize(c.buffer_dtype);
      std::vector<CudaCopyEntry> entries;
      for (size_t i = 0; i < counts.size(); ++i) {
        uint8_t* tensor = tensors + tensor_offsets[i];
        uint8_t* slot = buffer + buffer_offsets[i] * buffer_elem;
        entries.push_back(in ? CudaCopyEntry{tensor, slot, counts[i]}
                             : CudaCopyEntry{slot, tensor, counts[i]});
      }
      const DataType src_dtype = in ? DataType::kFloat32 : c.buffer_dtype;
      const DataType dst_dtype = in ? c.buffer_dtype : DataType::kFloat32;
      const size_t src_bytes = total_elems * DataTypeSize(src_dtype);
      const size_t dst_bytes = total_elems * DataTypeSize(dst_dtype);
      const double us = MedianUs(stream, o, [&] {
        CudaBatchedScaledCopy(entries.data(), entries.size(), src_dtype, dst_dtype, c.factor,
                              stream);
      });
      // The memcpy with the same read + write traffic.
      const size_t equal_bytes = (src_bytes + dst_bytes) / 2;
      const double base_us = memcpy_time(equal_bytes);
      // What the copy costs without batching: one cudaMemcpyAsync per tensor.
      double per_tensor_us = -1;
      if (src_dtype == dst_dtype && c.factor == 1.0) {
        per_tensor_us = MedianUs(stream, o, [&] {
          for (const CudaCopyEntry& e : entries) {
            Cuda(cudaMemcpyAsync(e.dst, e.src, e.count * sizeof(float), cudaMemcpyDeviceToDevice,
                                 stream),
                 "cudaMemcpyAsync");
          }
        });
      }
      const double traffic = static_cast<double>(src_bytes + dst_bytes);
      std::printf(
          "{\"case\": \"%s\", \"src\": \"%s\", \"dst\": \"%s\", \"factor\": %g, \"tensors\": %d, "
          "\"total_mib\": %zu, \"src_bytes\": %zu, \"dst_bytes\": %zu, \"time_us\": %.3f, "
          "\"traffic_gbps\": %.1f, \"memcpy_bytes\": %zu, \"memcpy_us\": %.3f, "
          "\"memcpy_traffic_gbps\": %.1f, \"fraction_of_memcpy\": %.4f, "
          "\"per_tensor_memcpy_us\": %s}\n",
          c.direction, DataTypeName(src_dtype), DataTypeName(dst_dtype), c.factor, o.tensors,
          total_mib, src_bytes, dst_bytes, us, traffic / us * 1e-3, equal_bytes, base_us,
          2.0 * equal_bytes / base_us * 1e-3, base_us / us,
          per_tensor_us < 0 ? "null" : std::to_string(per_tensor_us).c_str());
      std::fflush(stdout);
    }
    cudaFree(tensors);
    cudaFree(buffer);
    cudaFree(copy_src);
    cudaFree(copy_dst);
  }
  Cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(Parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
