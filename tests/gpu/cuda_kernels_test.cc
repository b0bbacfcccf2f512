// Standalone test of the CUDA kernels (csrc/reduce/cuda_kernels.h) and CudaMemoryOps against the
// CPU kernels (csrc/reduce/cpu_reduce.h, themselves checked against a scalar reference by
// tests/cpp/test_cpu_reduce.cc). Needs a CUDA GPU; built and run by tests/gpu/test_kernels.py:
//   nvcc -std=c++17 -O2 -DFUSECOMM_WITH_CUDA=1 -Icsrc csrc/reduce/cuda_kernels.cu
//        csrc/reduce/cpu_reduce.cc csrc/common/types.cc csrc/transport/cuda_memory.cc
//        tests/gpu/cuda_kernels_test.cc -o cuda_kernels_test
// Usage: cuda_kernels_test [seed]. Prints "N passed, M failed"; exits 1 on any failure.
//
// Integers, bools and casts must match bit for bit. Floats must too (both sides do the same
// IEEE operations); the one allowed difference is the payload of a NaN, and a result that is
// not bit-identical but within a few ulps is counted and reported rather than failed.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/types.h"
#include "reduce/cpu_reduce.h"
#include "../cpp/test_rng.h"
#include "reduce/cuda_kernels.h"
#include "transport/cuda_memory.h"

using namespace fusecomm;

namespace {

int g_passed = 0;
int g_failed = 0;
long g_inexact = 0;  // float elements within tolerance but not bit-identical

void Check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL: %s\n", what.c_str());
    std::fflush(stdout);
  }
}

// Failures of the test's own CUDA calls (not of the code under test) end the run.
void Cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::printf("FATAL: %s: %s\n", what, cudaGetErrorString(status));
    std::printf("%d passed, %d failed\n", g_passed, g_failed + 1);
    std::exit(1);
  }
}

template <typename Fn>
bool ThrowsInvalidArgument(Fn fn) {
  try {
    fn();
  } catch (const InvalidArgument&) {
    return true;
  } catch (...) {
    return false;
  }
  return false;
}

using fusecomm_test::Rng;

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    Cuda(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes), "cudaMalloc");
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  uint8_t* get() const { return static_cast<uint8_t*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

using Bytes = std::vector<uint8_t>;

template <typename T>
T Load(const uint8_t* p, size_t i) {
  T v;
  std::memcpy(&v, p + i * sizeof(T), sizeof(T));
  return v;
}

template <typename T>
void Store(uint8_t* p, size_t i, T v) {
  std::memcpy(p + i * sizeof(T), &v, sizeof(T));
}

// ---- Random data --------------------------------------------------------------------------------

// Mostly moderate values (so sums and products stay finite and meaningful), plus zeros of both
// signs, infinities, NaNs, subnormals and random bit patterns.
double RandomFloatValue(Rng& rng) {
  switch (rng.Below(24)) {
    case 0: return 0.0;
    case 1: return -0.0;
    case 2: return std::numeric_limits<double>::infinity();
    case 3: return -std::numeric_limits<double>::infinity();
    case 4: return std::numeric_limits<double>::quiet_NaN();
    case 5: return 1e-41;   // float32 subnormal
    case 6: return -3e-8;   // float16 subnormal
    default: break;
  }
  const double magnitude = std::ldexp(1.0, static_cast<int>(rng.Below(24)) - 12);
  return (rng.Uniform() * 2 - 1) * magnitude;
}

void FillRandom(uint8_t* p, DataType dtype, size_t n, Rng& rng) {
  for (size_t i = 0; i < n; ++i) {
    const bool raw_bits = rng.Below(16) == 0;
    switch (dtype) {
      case DataType::kUInt8:
      case DataType::kInt8:
        p[i] = static_cast<uint8_t>(rng.Next());
        break;
      case DataType::kBool: {
        // Any non-zero byte is true: include bytes other than 1.
        const uint64_t r = rng.Next();
        p[i] = (r & 1) ? 0 : (r & 2) ? 1 : static_cast<uint8_t>(r >> 8);
        break;
      }
      case DataType::kInt32:
        Store<uint32_t>(p, i, static_cast<uint32_t>(rng.Next()));
        break;
      case DataType::kInt16:
      case DataType::kUInt16:
        Store<uint16_t>(p, i, static_cast<uint16_t>(rng.Next()));
        break;
      case DataType::kInt64:
        Store<uint64_t>(p, i, rng.Next());
        break;
      case DataType::kFloat16: {
        const float v = static_cast<float>(RandomFloatValue(rng));
        Store<uint16_t>(p, i, raw_bits ? static_cast<uint16_t>(rng.Next()) : FloatToHalf(v));
        break;
      }
      case DataType::kBFloat16: {
        const float v = static_cast<float>(RandomFloatValue(rng));
        Store<uint16_t>(p, i, raw_bits ? static_cast<uint16_t>(rng.Next()) : FloatToBFloat16(v));
        break;
      }
      case DataType::kFloat32:
        if (raw_bits) {
          Store<uint32_t>(p, i, static_cast<uint32_t>(rng.Next()));
        } else {
          Store<float>(p, i, static_cast<float>(RandomFloatValue(rng)));
        }
        break;
      case DataType::kFloat64:
        if (raw_bits) {
          Store<uint64_t>(p, i, rng.Next());
        } else {
          Store<double>(p, i, RandomFloatValue(rng));
        }
        break;
    }
  }
}

// ---- Comparison ---------------------------------------------------------------------------------

double AsDouble(const uint8_t* p, size_t i, DataType dtype) {
  switch (dtype) {
    case DataType::kFloat16: return HalfToFloat(Load<uint16_t>(p, i));
    case DataType::kBFloat16: return BFloat16ToFloat(Load<uint16_t>(p, i));
    case DataType::kFloat32: return Load<float>(p, i);
    case DataType::kFloat64: return Load<double>(p, i);
    default: return 0;
  }
}

// Relative tolerance: a few units in the last place of each format.
double Tolerance(DataType dtype) {
  switch (dtype) {
    case DataType::kFloat16: return 4e-3;
    case DataType::kBFloat16: return 3e-2;
    case DataType::kFloat32: return 1e-6;
    default: return 1e-14;
  }
}

// Empty when equal; otherwise a description of the first difference.
std::string Compare(const Bytes& expected, const Bytes& actual, DataType dtype) {
  const size_t elem = DataTypeSize(dtype);
  const size_t n = expected.size() / elem;
  if (actual.size() != expected.size()) return "size differs";
  if (std::memcmp(expected.data(), actual.data(), expected.size()) == 0) return "";
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* e = expected.data() + i * elem;
    const uint8_t* a = actual.data() + i * elem;
    if (std::memcmp(e, a, elem) == 0) continue;
    if (IsFloatingPoint(dtype)) {
      const double ev = AsDouble(expected.data(), i, dtype);
      const double av = AsDouble(actual.data(), i, dtype);
      if (std::isnan(ev) && std::isnan(av)) continue;  // NaN payloads may differ
      if (std::isfinite(ev) && std::isfinite(av) &&
          std::fabs(ev - av) <= Tolerance(dtype) * std::fmax(std::fabs(ev), std::fabs(av))) {
        ++g_inexact;
        continue;
      }
      char msg[160];
      std::snprintf(msg, sizeof(msg), "element %zu: expected %.17g, got %.17g", i, ev, av);
      return msg;
    }
    uint64_t ev = 0, av = 0;
    std::memcpy(&ev, e, elem);
    std::memcpy(&av, a, elem);
    char msg[160];
    std::snprintf(msg, sizeof(msg), "element %zu: expected bits 0x%llx, got 0x%llx", i,
                  static_cast<unsigned long long>(ev), static_cast<unsigned long long>(av));
    return msg;
  }
  return "";
}

// ---- One operation, GPU against CPU -------------------------------------------------------------

constexpr DataType kAllTypes[] = {DataType::kUInt8,   DataType::kInt8,    DataType::kInt32,
                                  DataType::kInt64,   DataType::kFloat16, DataType::kBFloat16,
                                  DataType::kFloat32, DataType::kFloat64, DataType::kBool,
                                  DataType::kInt16,   DataType::kUInt16};
constexpr ReduceOp kAllOps[] = {ReduceOp::kSum, ReduceOp::kAverage, ReduceOp::kMin,
                                ReduceOp::kMax, ReduceOp::kProduct};

// Where dst and src start, in elements from their buffers' 256-byte-aligned starts. Offsets of
// one element exercise the scalar head/tail and the misaligned path.
struct Layout {
  size_t dst_offset;
  size_t src_offset;
  bool in_place;
  const char* name;
};
constexpr Layout kLayouts[] = {{0, 0, false, "aligned"},
                               {1, 1, false, "both+1"},
                               {0, 1, false, "src+1"},
                               {1, 0, false, "dst+1"},
                               {1, 1, true, "in-place+1"},
                               {0, 0, true, "in-place"}};

constexpr size_t kLargeCount = (size_t(1) << 20) + 7;
const std::vector<size_t> kCounts = {0,   1,    2,    3,    5,     7,    15,  16,        17,
                                     31,  127,  257,  1009, 4093,  4099, 8191, 65537,
                                     kLargeCount};
// Elements after each range that must stay untouched.
constexpr size_t kGuard = 37;

std::string Describe(const char* op, DataType dtype, size_t n, const Layout& layout,
                     const std::string& extra) {
  return std::string(op) + " " + DataTypeName(dtype) + " n=" + std::to_string(n) + " " +
         layout.name + (extra.empty() ? "" : " " + extra);
}

// Runs gpu(dst, src) and cpu(dst, src) on the same random data (dst is read too, for the
// reductions) and compares dst's whole buffer, guard elements included.
template <typename GpuOp, typename CpuOp>
void RunCase(const std::string& what, DataType dtype, size_t n, const Layout& layout,
             cudaStream_t stream, Rng& rng, GpuOp gpu, CpuOp cpu) {
  const size_t elem = DataTypeSize(dtype);
  const size_t dst_elems = layout.dst_offset + n + kGuard;
  const size_t src_elems = layout.src_offset + n + kGuard;
  Bytes dst_host(dst_elems * elem), src_host(src_elems * elem);
  FillRandom(dst_host.data(), dtype, dst_elems, rng);
  FillRandom(src_host.data(), dtype, src_elems, rng);
  DeviceBuffer dst_dev(dst_host.size()), src_dev(src_host.size());
  Cuda(cudaMemcpy(dst_dev.get(), dst_host.data(), dst_host.size(), cudaMemcpyHostToDevice),
       "upload");
  Cuda(cudaMemcpy(src_dev.get(), src_host.data(), src_host.size(), cudaMemcpyHostToDevice),
       "upload");

  uint8_t* gpu_dst = dst_dev.get() + layout.dst_offset * elem;
  const uint8_t* gpu_src = layout.in_place ? gpu_dst : src_dev.get() + layout.src_offset * elem;
  try {
    gpu(gpu_dst, gpu_src);
  } catch (const std::exception& e) {
    Check(false, what + ": threw " + e.what());
    return;
  }
  const cudaError_t status = cudaStreamSynchronize(stream);
  if (status != cudaSuccess) {
    Check(false, what + ": " + cudaGetErrorString(status));
    std::printf("%d passed, %d failed (device error: stopping)\n", g_passed, g_failed);
    std::exit(1);
  }
  Bytes actual(dst_host.size());
  Cuda(cudaMemcpy(actual.data(), dst_dev.get(), actual.size(), cudaMemcpyDeviceToHost),
       "download");

  Bytes expected = dst_host;
  uint8_t* cpu_dst = expected.data() + layout.dst_offset * elem;
  cpu(cpu_dst, layout.in_place ? cpu_dst : src_host.data() + layout.src_offset * elem);
  const std::string diff = Compare(expected, actual, dtype);
  Check(diff.empty(), what + ": " + diff);
}

// Large counts with the common layouts only, to keep the run short.
bool SkipLayout(size_t n, const Layout& layout) {
  return n == kLargeCount && layout.dst_offset != layout.src_offset;
}

void TestReduce(cudaStream_t stream, Rng& rng) {
  for (DataType dtype : kAllTypes) {
    for (ReduceOp op : kAllOps) {
      for (size_t n : kCounts) {
        for (const Layout& layout : kLayouts) {
          if (SkipLayout(n, layout)) continue;
          RunCase(
              Describe("CudaReduceInto", dtype, n, layout, ReduceOpName(op)), dtype, n, layout,
              stream, rng,
              [&](void* d, const void* s) { CudaReduceInto(d, s, n, dtype, op, stream); },
              [&](void* d, const void* s) { CpuReduceInto(d, s, n, dtype, op); });
        }
      }
    }
  }
}

void TestScaledCopy(cudaStream_t stream, Rng& rng) {
  const double kFactors[] = {1.0,  0.5,   -2.0,  1.0 / 3.0, 3.7, 1e12, -1e12,
                             1e-3, 0.0,  std::numeric_limits<double>::quiet_NaN()};
  for (DataType dtype : kAllTypes) {
    for (double factor : kFactors) {
      if (dtype == DataType::kBool && factor != 1.0) continue;
      for (size_t n : kCounts) {
        for (const Layout& layout : kLayouts) {
          if (SkipLayout(n, layout)) continue;
          RunCase(
              Describe("CudaScaledCopy", dtype, n, layout, "factor=" + std::to_string(factor)),
              dtype, n, layout, stream, rng,
              [&](void* d, const void* s) { CudaScaledCopy(d, s, n, dtype, factor, stream); },
              [&](void* d, const void* s) { CpuScaledCopy(d, s, n, dtype, factor); });
        }
      }
    }
  }
}

void TestDivide(cudaStream_t stream, Rng& rng) {
  const int64_t kDivisors[] = {1, 2, 3, -1, -7, 1000003, std::numeric_limits<int64_t>::min(),
                               std::numeric_limits<int64_t>::max()};
  for (DataType dtype : kAllTypes) {
    if (dtype == DataType::kBool) continue;
    for (int64_t divisor : kDivisors) {
      for (size_t n : kCounts) {
        for (const Layout& layout : kLayouts) {
          if (SkipLayout(n, layout)) continue;
          RunCase(
              Describe("CudaDivide", dtype, n, layout, "divisor=" + std::to_string(divisor)),
              dtype, n, layout, stream, rng,
              [&](void* d, const void* s) { CudaDivide(d, s, n, dtype, divisor, stream); },
              [&](void* d, const void* s) { CpuDivide(d, s, n, dtype, divisor); });
        }
      }
    }
  }
}

// ---- Batched copies -----------------------------------------------------------------------------

// The CPU meaning of one batched entry: CpuScaledCopy when the types agree, otherwise
// float(src) * float(factor) rounded once to dst's type.
float ToFloat(const uint8_t* p, size_t i, DataType dtype) {
  return static_cast<float>(AsDouble(p, i, dtype));
}

void StoreFloat(uint8_t* p, size_t i, DataType dtype, float v) {
  switch (dtype) {
    case DataType::kFloat16: return Store<uint16_t>(p, i, FloatToHalf(v));
    case DataType::kBFloat16: return Store<uint16_t>(p, i, FloatToBFloat16(v));
    default: return Store<float>(p, i, v);
  }
}

void ReferenceEntry(uint8_t* dst, const uint8_t* src, size_t n, DataType src_dtype,
                    DataType dst_dtype, double factor) {
  if (src_dtype == dst_dtype) {
    CpuScaledCopy(dst, src, n, src_dtype, factor);
    return;
  }
  const float f = static_cast<float>(factor);
  for (size_t i = 0; i < n; ++i) StoreFloat(dst, i, dst_dtype, ToFloat(src, i, src_dtype) * f);
}

struct BatchedSpec {
  DataType src_dtype;
  DataType dst_dtype;
  double factor;
  size_t num_entries;
  size_t large_count;  // 0, or the size of one extra large entry (split into pieces on the GPU)
};

// Entries of random sizes (some empty, some single elements) packed with random gaps into one
// source and one destination buffer, like tensors around a fusion buffer.
void RunBatched(const BatchedSpec& spec, cudaStream_t stream, Rng& rng) {
  const size_t se = DataTypeSize(spec.src_dtype);
  const size_t de = DataTypeSize(spec.dst_dtype);
  std::vector<size_t> counts, src_offsets, dst_offsets;
  size_t src_elems = 0, dst_elems = 0;
  for (size_t i = 0; i < spec.num_entries + (spec.large_count ? 1 : 0); ++i) {
    size_t n;
    const size_t kind = rng.Below(10);
    if (i == spec.num_entries) {
      n = spec.large_count;
    } else if (kind == 0) {
      n = 0;
    } else if (kind == 1) {
      n = 1;
    } else if (kind == 2) {
      n = 20000 + rng.Below(200000);
    } else {
      n = rng.Below(3000);
    }
    src_elems += rng.Below(4);  // gap: misaligns some entries
    dst_elems += rng.Below(4);
    counts.push_back(n);
    src_offsets.push_back(src_elems);
    dst_offsets.push_back(dst_elems);
    src_elems += n;
    dst_elems += n;
  }
  src_elems += kGuard;
  dst_elems += kGuard;

  Bytes src_host(src_elems * se), dst_host(dst_elems * de);
  FillRandom(src_host.data(), spec.src_dtype, src_elems, rng);
  FillRandom(dst_host.data(), spec.dst_dtype, dst_elems, rng);
  DeviceBuffer src_dev(src_host.size()), dst_dev(dst_host.size());
  Cuda(cudaMemcpy(src_dev.get(), src_host.data(), src_host.size(), cudaMemcpyHostToDevice),
       "upload");
  Cuda(cudaMemcpy(dst_dev.get(), dst_host.data(), dst_host.size(), cudaMemcpyHostToDevice),
       "upload");

  std::vector<CudaCopyEntry> entries;
  Bytes expected = dst_host;
  for (size_t i = 0; i < counts.size(); ++i) {
    entries.push_back({src_dev.get() + src_offsets[i] * se, dst_dev.get() + dst_offsets[i] * de,
                       counts[i]});
    ReferenceEntry(expected.data() + dst_offsets[i] * de, src_host.data() + src_offsets[i] * se,
                   counts[i], spec.src_dtype, spec.dst_dtype, spec.factor);
  }
  const std::string what = std::string("CudaBatchedScaledCopy ") + DataTypeName(spec.src_dtype) +
                           "->" + DataTypeName(spec.dst_dtype) +
                           " factor=" + std::to_string(spec.factor) +
                           " entries=" + std::to_string(entries.size()) +
                           (spec.large_count ? " large=" + std::to_string(spec.large_count) : "");
  try {
    CudaBatchedScaledCopy(entries.data(), entries.size(), spec.src_dtype, spec.dst_dtype,
                          spec.factor, stream);
  } catch (const std::exception& e) {
    Check(false, what + ": threw " + e.what());
    return;
  }
  const cudaError_t status = cudaStreamSynchronize(stream);
  if (status != cudaSuccess) {
    Check(false, what + ": " + cudaGetErrorString(status));
    std::printf("%d passed, %d failed (device error: stopping)\n", g_passed, g_failed);
    std::exit(1);
  }
  Bytes actual(dst_host.size());
  Cuda(cudaMemcpy(actual.data(), dst_dev.get(), actual.size(), cudaMemcpyDeviceToHost),
       "download");
  const std::string diff = Compare(expected, actual, spec.dst_dtype);
  Check(diff.empty(), what + ": " + diff);
}

void TestBatched(cudaStream_t stream, Rng& rng) {
  // Around the per-launch entry limit (128) and well past it.
  const size_t kEntryCounts[] = {1, 2, 127, 128, 129, 300};
  for (DataType dtype : kAllTypes) {
    for (double factor : {1.0, 0.5, -3.0}) {
      if (dtype == DataType::kBool && factor != 1.0) continue;
      for (size_t entries : kEntryCounts) {
        RunBatched({dtype, dtype, factor, entries, 0}, stream, rng);
      }
    }
  }
  const DataType kCastTypes[] = {DataType::kFloat32, DataType::kFloat16, DataType::kBFloat16};
  for (DataType src : kCastTypes) {
    for (DataType dst : kCastTypes) {
      if (src == dst) continue;
      for (double factor : {1.0, 0.5, 1.0 / 3.0, -8.0, 1e5}) {
        for (size_t entries : kEntryCounts) {
          RunBatched({src, dst, factor, entries, 0}, stream, rng);
        }
      }
    }
  }
  // Entries longer than one piece (4096 blocks) are split; the split must keep alignment.
  const size_t kHuge = (size_t(1) << 24) + 7;
  RunBatched({DataType::kFloat32, DataType::kFloat32, 1.0, 3, kHuge}, stream, rng);
  RunBatched({DataType::kFloat32, DataType::kFloat32, 0.25, 3, kHuge}, stream, rng);
  RunBatched({DataType::kFloat32, DataType::kBFloat16, 0.5, 3, kHuge}, stream, rng);
  RunBatched({DataType::kFloat16, DataType::kFloat32, 2.0, 3, kHuge}, stream, rng);
  RunBatched({DataType::kUInt8, DataType::kUInt8, 1.0, 3, (size_t(1) << 26) + 5}, stream, rng);
}

// ---- Argument checks ----------------------------------------------------------------------------

void TestErrors(cudaStream_t stream) {
  DeviceBuffer buf(1 << 16);
  uint8_t* p = buf.get();
  // Same conditions as the CPU kernels.
  Check(ThrowsInvalidArgument([&] {
          CudaScaledCopy(p, p + 4096, 8, DataType::kBool, 2.0, stream);
        }),
        "CudaScaledCopy of bool with factor != 1 throws");
  Check(ThrowsInvalidArgument([&] { CudaDivide(p, p + 4096, 8, DataType::kBool, 2, stream); }),
        "CudaDivide of bool throws");
  Check(ThrowsInvalidArgument([&] { CudaDivide(p, p + 4096, 8, DataType::kInt32, 0, stream); }),
        "CudaDivide by zero throws");
  Check(ThrowsInvalidArgument([&] {
          CudaReduceInto(p, p + 4096, 8, static_cast<DataType>(42), ReduceOp::kSum, stream);
        }),
        "CudaReduceInto of an unknown dtype throws");
  Check(ThrowsInvalidArgument([&] {
          CudaReduceInto(p, p + 4096, 8, DataType::kFloat32, static_cast<ReduceOp>(42), stream);
        }),
        "CudaReduceInto with an unknown op throws");
  Check(ThrowsInvalidArgument([&] {
          CudaReduceInto(p + 4, p, 100, DataType::kFloat32, ReduceOp::kSum, stream);
        }),
        "CudaReduceInto with partially overlapping ranges throws");
  Check(ThrowsInvalidArgument([&] {
          CudaScaledCopy(p + 4, p, 100, DataType::kInt32, 1.0, stream);
        }),
        "CudaScaledCopy (copy) with partially overlapping ranges throws");
  Check(ThrowsInvalidArgument([&] {
          CudaScaledCopy(p + 4, p, 100, DataType::kInt32, 2.0, stream);
        }),
        "CudaScaledCopy with partially overlapping ranges throws");
  Check(ThrowsInvalidArgument([&] {
          CudaReduceInto(p + 1, p + 4097, 8, DataType::kFloat32, ReduceOp::kSum, stream);
        }),
        "CudaReduceInto on pointers not aligned to the element size throws");
  Check(ThrowsInvalidArgument([&] {
          CudaReduceInto(nullptr, p, 8, DataType::kFloat32, ReduceOp::kSum, stream);
        }),
        "CudaReduceInto on a null pointer throws");
  // The casts are float32/float16/bfloat16 only.
  CudaCopyEntry entry{p, p + 8192, 16};
  Check(ThrowsInvalidArgument([&] {
          CudaBatchedScaledCopy(&entry, 1, DataType::kInt32, DataType::kFloat32, 1.0, stream);
        }),
        "CudaBatchedScaledCopy int32 -> float32 throws");
  Check(ThrowsInvalidArgument([&] {
          CudaBatchedScaledCopy(&entry, 1, DataType::kFloat64, DataType::kFloat32, 1.0, stream);
        }),
        "CudaBatchedScaledCopy float64 -> float32 throws");
  Check(ThrowsInvalidArgument([&] {
          CudaBatchedScaledCopy(&entry, 1, DataType::kBool, DataType::kBool, 0.5, stream);
        }),
        "CudaBatchedScaledCopy of bool with factor != 1 throws");
  CudaCopyEntry overlapping{p, p + 16, 16};
  Check(ThrowsInvalidArgument([&] {
          CudaBatchedScaledCopy(&overlapping, 1, DataType::kFloat32, DataType::kFloat16, 1.0,
                                stream);
        }),
        "CudaBatchedScaledCopy with overlapping entries throws");
  // Nothing to do launches nothing and accepts null pointers, like the CPU kernels.
  bool ok = true;
  try {
    CudaReduceInto(nullptr, nullptr, 0, DataType::kFloat32, ReduceOp::kSum, stream);
    CudaScaledCopy(nullptr, nullptr, 0, DataType::kFloat32, 2.0, stream);
    CudaScaledCopy(nullptr, nullptr, 0, DataType::kFloat32, 1.0, stream);
    CudaDivide(nullptr, nullptr, 0, DataType::kInt32, 3, stream);
    CudaCopyEntry empty{nullptr, nullptr, 0};
    CudaBatchedScaledCopy(&empty, 1, DataType::kFloat32, DataType::kFloat16, 1.0, stream);
    CudaBatchedScaledCopy(nullptr, 0, DataType::kFloat32, DataType::kFloat32, 1.0, stream);
  } catch (const std::exception& e) {
    ok = false;
    std::printf("  %s\n", e.what());
  }
  Check(ok, "count 0 is a no-op for every kernel");
  Check(cudaStreamSynchronize(stream) == cudaSuccess, "no device error after the argument checks");
}

// ---- CudaMemoryOps ------------------------------------------------------------------------------

void TestMemoryOps(cudaStream_t stream, Rng& rng) {
  int before = -1;
  Cuda(cudaGetDevice(&before), "cudaGetDevice");
  auto current_device_kept = [&](const char* what) {
    int now = -2;
    Cuda(cudaGetDevice(&now), "cudaGetDevice");
    Check(now == before, std::string("CudaMemoryOps keeps the current device: ") + what);
  };

  CudaMemoryOps ops(before, stream);
  {
    void* first = nullptr;
    {
      std::shared_ptr<void> a = ops.Allocate(1000);
      first = a.get();
      Check(first != nullptr && reinterpret_cast<uintptr_t>(first) % 256 == 0,
            "Allocate returns 256-byte-aligned device memory");
    }
    Check(ops.cached_bytes() >= 1000, "a freed block is cached");
    std::shared_ptr<void> b = ops.Allocate(900);
    Check(b.get() == first, "a cached block of the same size class is reused");
    std::shared_ptr<void> c = ops.Allocate(1000);
    Check(c.get() != first, "a block in use is not handed out twice");
    std::shared_ptr<void> zero = ops.Allocate(0);
    Check(zero.get() != nullptr, "Allocate(0) returns a real pointer");
  }
  {
    // Many sizes at once, written and freed, then all reused.
    std::vector<std::shared_ptr<void>> blocks;
    for (int i = 0; i < 64; ++i) {
      const size_t bytes = rng.Below(size_t(3) << 20);
      blocks.push_back(ops.Allocate(bytes));
      Cuda(cudaMemsetAsync(blocks.back().get(), i, bytes, stream), "cudaMemsetAsync");
    }
    blocks.clear();
    const size_t cached = ops.cached_bytes();
    for (int i = 0; i < 16; ++i) blocks.push_back(ops.Allocate(rng.Below(size_t(3) << 20)));
    Check(ops.cached_bytes() < cached, "cached blocks are reused");
    blocks.clear();
    ops.ReleaseCachedMemory();
    Check(ops.cached_bytes() == 0, "ReleaseCachedMemory empties the cache");
  }
  current_device_kept("Allocate");

  // Copy between overlapping ranges has memmove semantics, in both directions.
  const size_t kBytes = 1 << 20;
  for (const std::pair<size_t, size_t>& shift : {std::pair<size_t, size_t>{4096, 0},
                                                 std::pair<size_t, size_t>{0, 4096},
                                                 std::pair<size_t, size_t>{3, 0}}) {
    Bytes host(kBytes + 8192);
    FillRandom(host.data(), DataType::kUInt8, host.size(), rng);
    DeviceBuffer dev(host.size());
    Cuda(cudaMemcpy(dev.get(), host.data(), host.size(), cudaMemcpyHostToDevice), "upload");
    ops.Copy(dev.get() + shift.first, dev.get() + shift.second, kBytes);
    ops.Synchronize();
    std::memmove(host.data() + shift.first, host.data() + shift.second, kBytes);
    Bytes actual(host.size());
    Cuda(cudaMemcpy(actual.data(), dev.get(), actual.size(), cudaMemcpyDeviceToHost), "download");
    Check(actual == host, "CudaMemoryOps::Copy of overlapping ranges (dst+" +
                              std::to_string(shift.first) + ", src+" +
                              std::to_string(shift.second) + ") is a memmove");
  }
  {
    // ScaledCopy with factor 1 is that same copy.
    Bytes host(4 * 5000);
    FillRandom(host.data(), DataType::kFloat32, 5000, rng);
    DeviceBuffer dev(host.size());
    Cuda(cudaMemcpy(dev.get(), host.data(), host.size(), cudaMemcpyHostToDevice), "upload");
    ops.ScaledCopy(dev.get() + 40, dev.get(), 4000, DataType::kFloat32, 1.0);
    ops.Synchronize();
    std::memmove(host.data() + 40, host.data(), 4 * 4000);
    Bytes actual(host.size());
    Cuda(cudaMemcpy(actual.data(), dev.get(), actual.size(), cudaMemcpyDeviceToHost), "download");
    Check(actual == host, "CudaMemoryOps::ScaledCopy(factor 1) of overlapping ranges");
  }
  // The kernels through MemoryOps, on scratch memory from the pool.
  const Layout aligned = kLayouts[0];
  for (DataType dtype : {DataType::kFloat32, DataType::kInt32, DataType::kBFloat16}) {
    const size_t n = 10007;
    RunCase(Describe("CudaMemoryOps::ReduceInto", dtype, n, aligned, "Max"), dtype, n, aligned,
            stream, rng,
            [&](void* d, const void* s) { ops.ReduceInto(d, s, n, dtype, ReduceOp::kMax); },
            [&](void* d, const void* s) { CpuReduceInto(d, s, n, dtype, ReduceOp::kMax); });
    RunCase(Describe("CudaMemoryOps::ScaledCopy", dtype, n, aligned, "0.125"), dtype, n, aligned,
            stream, rng, [&](void* d, const void* s) { ops.ScaledCopy(d, s, n, dtype, 0.125); },
            [&](void* d, const void* s) { CpuScaledCopy(d, s, n, dtype, 0.125); });
    RunCase(Describe("CudaMemoryOps::Divide", dtype, n, aligned, "7"), dtype, n, aligned,
            stream, rng, [&](void* d, const void* s) { ops.Divide(d, s, n, dtype, 7); },
            [&](void* d, const void* s) { CpuDivide(d, s, n, dtype, 7); });
  }
  current_device_kept("kernels and copies");

  bool threw = false;
  try {
    CheckCuda(cudaErrorInvalidValue, "some CUDA call");
  } catch (const CollectiveError& e) {
    threw = std::string(e.what()).find("some CUDA call") != std::string::npos;
  }
  Check(threw, "CheckCuda throws CollectiveError naming the call");
  Check(cudaGetLastError() == cudaSuccess, "CheckCuda leaves no stale last error");

  // A second device: operations go to it and the caller's device is restored.
  int devices = 0;
  Cuda(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
  if (devices >= 2) {
    const int other = before == 0 ? 1 : 0;
    cudaStream_t other_stream;
    Cuda(cudaSetDevice(other), "cudaSetDevice");
    Cuda(cudaStreamCreateWithFlags(&other_stream, cudaStreamNonBlocking), "cudaStreamCreate");
    Cuda(cudaSetDevice(before), "cudaSetDevice");
    {
      CudaMemoryOps other_ops(other, other_stream);
      std::shared_ptr<void> a = other_ops.Allocate(1 << 20);
      std::shared_ptr<void> b = other_ops.Allocate(1 << 20);
      cudaPointerAttributes attributes{};
      Cuda(cudaPointerGetAttributes(&attributes, a.get()), "cudaPointerGetAttributes");
      Check(attributes.device == other, "Allocate uses the CudaMemoryOps' device");
      other_ops.ScaledCopy(b.get(), a.get(), (1 << 20) / 4, DataType::kFloat32, 0.5);
      other_ops.Synchronize();
      current_device_kept("operations on another device");
    }
    cudaStreamDestroy(other_stream);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : 20240611;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device\n0 passed, 1 failed\n");
    return 1;
  }
  cudaDeviceProp prop{};
  Cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("device 0: %s (sm_%d%d), seed %llu\n", prop.name, prop.major, prop.minor,
              static_cast<unsigned long long>(seed));
  Cuda(cudaSetDevice(0), "cudaSetDevice");
  cudaStream_t stream;
  Cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  Rng rng(seed);
  try {
    TestErrors(stream);
    TestMemoryOps(stream, rng);
    TestBatched(stream, rng);
    TestReduce(stream, rng);
    TestScaledCopy(stream, rng);
    TestDivide(stream, rng);
    // The legacy default stream works too.
    RunCase("CudaReduceInto on the default stream", DataType::kFloat32, 4099, kLayouts[1],
            nullptr, rng,
            [&](void* d, const void* s) {
              CudaReduceInto(d, s, 4099, DataType::kFloat32, ReduceOp::kSum, nullptr);
            },
            [&](void* d, const void* s) {
              CpuReduceInto(d, s, 4099, DataType::kFloat32, ReduceOp::kSum);
            });
  } catch (const std::exception& e) {
    Check(false, std::string("unexpected exception: ") + e.what());
  }
  cudaStreamDestroy(stream);
  if (g_inexact > 0) {
    std::printf("note: %ld float results within tolerance but not bit-identical to the CPU\n",
                g_inexact);
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
