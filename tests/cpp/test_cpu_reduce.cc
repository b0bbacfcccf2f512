// Standalone test of the CPU kernels (csrc/reduce/cpu_reduce.h) and HostMemoryOps. Every kernel
// is compared with a plain scalar reference written independently of the implementation
// (conversions via ldexp and a search over all half values, not bit tricks).
// Build: g++ -std=c++17 -O3 -Wall -Wextra -Icsrc csrc/reduce/cpu_reduce.cc csrc/common/types.cc
//        csrc/transport/host_memory.cc tests/cpp/test_cpu_reduce.cc -o test_cpu_reduce
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/types.h"
#include "reduce/cpu_reduce.h"
#include "test_rng.h"
#include "transport/memory.h"
#include "test_check.h"

using namespace fusecomm;

namespace {

using fusecomm_test::Check;

template <typename Fn>
bool Throws(Fn fn) {
  try {
    fn();
  } catch (const InvalidArgument&) {
    return true;
  }
  return false;
}

using fusecomm_test::Rng;

template <typename T>
T Load(const std::vector<uint8_t>& buf, size_t i) {
  T v;
  std::memcpy(&v, buf.data() + i * sizeof(T), sizeof(T));
  return v;
}

template <typename T>
void Store(std::vector<uint8_t>& buf, size_t i, T v) {
  std::memcpy(buf.data() + i * sizeof(T), &v, sizeof(T));
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint64_t Bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}

// ---- Reference conversions ------------------------------------------------------------------

double RefHalfValue(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0x1f) {
    return mant ? std::numeric_limits<double>::quiet_NaN()
                : sign * std::numeric_limits<double>::infinity();
  }
  if (exp == 0) return sign * std::ldexp(static_cast<double>(mant), -24);
  return sign * std::ldexp(static_cast<double>(1024 + mant), exp - 25);
}

float RefHalfToFloat(uint16_t h) { return static_cast<float>(RefHalfValue(h)); }

double RefBf16Value(uint16_t b) {
  const int sign = (b >> 15) ? -1 : 1;
  const int exp = (b >> 7) & 0xff;
  const int mant = b & 0x7f;
  if (exp == 0xff) {
    return mant ? std::numeric_limits<double>::quiet_NaN()
                : sign * std::numeric_limits<double>::infinity();
  }
  if (exp == 0) return sign * std::ldexp(static_cast<double>(mant), -133);
  return sign * std::ldexp(static_cast<double>(128 + mant), exp - 134);
}

float RefBf16ToFloat(uint16_t b) { return static_cast<float>(RefBf16Value(b)); }

// Nearest of the positive half patterns 0..0x7c00 (0x7c00 standing for 65536, the next value
// an unbounded exponent would give, so that overflow rounds as IEEE says), ties to even pattern.
uint16_t RefFloatToHalf(float f) {
  if (std::isnan(f)) return 0x7e00;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double x = std::fabs(static_cast<double>(f));
  auto value = [](uint32_t p) {
    return p == 0x7c00 ? 65536.0 : RefHalfValue(static_cast<uint16_t>(p));
  };
  if (x >= 65536.0) return sign | 0x7c00;
  uint32_t lo = 0, hi = 0x7c00;  // value(lo) <= x < value(hi)
  while (hi - lo > 1) {
    const uint32_t mid = (lo + hi) / 2;
    (value(mid) <= x ? lo : hi) = mid;
  }
  const double dl = x - value(lo), dh = value(hi) - x;
  const uint32_t p = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
  return static_cast<uint16_t>(sign | p);
}

uint16_t RefFloatToBf16(float f) {
  if (std::isnan(f)) return 0x7fc0;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double x = std::fabs(static_cast<double>(f));
  const uint32_t lo = (Bits(f) & 0x7fffffffu) >> 16;  // truncation: value(lo) <= x
  if (lo >= 0x7f80) return static_cast<uint16_t>(sign | lo);  // infinity
  const uint32_t hi = lo + 1;
  const double vl = RefBf16Value(static_cast<uint16_t>(lo));
  const double vh = hi == 0x7f80 ? std::ldexp(1.0, 128) : RefBf16Value(static_cast<uint16_t>(hi));
  const double dl = x - vl, dh = vh - x;
  const uint32_t p = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
  return static_cast<uint16_t>(sign | p);
}

bool HalfIsNan(uint16_t h) { return (h & 0x7fff) > 0x7c00; }
bool Bf16IsNan(uint16_t b) { return (b & 0x7fff) > 0x7f80; }

// ---- Reference reductions -------------------------------------------------------------------

template <typename T>
T RefInt(T a, T b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage:
      return static_cast<T>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
    case ReduceOp::kProduct:
      return static_cast<T>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
    case ReduceOp::kMin: return std::min(a, b);
    case ReduceOp::kMax: return std::max(a, b);
    case ReduceOp::kAdasum: break;  // not element-wise (collectives/adasum_allreduce.cc)
  }
  return 0;
}

// numpy.minimum/maximum: a NaN operand wins; otherwise ties keep the first operand.
template <typename F>
F RefFloat(F a, F b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage: return a + b;
    case ReduceOp::kProduct: return a * b;
    case ReduceOp::kMin:
      if (std::isnan(a)) return a;
      if (std::isnan(b)) return b;
      return b < a ? b : a;
    case ReduceOp::kMax:
      if (std::isnan(a)) return a;
      if (std::isnan(b)) return b;
      return b > a ? b : a;
    case ReduceOp::kAdasum: break;
  }
  return 0;
}

uint8_t RefBool(uint8_t a, uint8_t b, ReduceOp op) {
  const bool x = a != 0, y = b != 0;
  const bool any = op == ReduceOp::kSum || op == ReduceOp::kAverage || op == ReduceOp::kMax;
  return any ? (x || y) : (x && y);
}

template <typename T>
void RefIntAt(std::vector<uint8_t>& d, const std::vector<uint8_t>& s, size_t i, ReduceOp op) {
  Store<T>(d, i, RefInt<T>(Load<T>(d, i), Load<T>(s, i), op));
}

template <typename F>
void RefFloatAt(std::vector<uint8_t>& d, const std::vector<uint8_t>& s, size_t i, ReduceOp op) {
  Store<F>(d, i, RefFloat<F>(Load<F>(d, i), Load<F>(s, i), op));
}

void RefReduce(std::vector<uint8_t>& d, const std::vector<uint8_t>& s, size_t n, DataType dt,
               ReduceOp op) {
  for (size_t i = 0; i < n; ++i) {
    switch (dt) {
      case DataType::kUInt8: RefIntAt<uint8_t>(d, s, i, op); break;
      case DataType::kInt8: RefIntAt<int8_t>(d, s, i, op); break;
      case DataType::kInt32: RefIntAt<int32_t>(d, s, i, op); break;
      case DataType::kInt64: RefIntAt<int64_t>(d, s, i, op); break;
      case DataType::kInt16: RefIntAt<int16_t>(d, s, i, op); break;
      case DataType::kUInt16: RefIntAt<uint16_t>(d, s, i, op); break;
      case DataType::kFloat32: RefFloatAt<float>(d, s, i, op); break;
      case DataType::kFloat64: RefFloatAt<double>(d, s, i, op); break;
      case DataType::kFloat16: {
        const float r = RefFloat(RefHalfToFloat(Load<uint16_t>(d, i)),
                                 RefHalfToFloat(Load<uint16_t>(s, i)), op);
        Store<uint16_t>(d, i, RefFloatToHalf(r));
        break;
      }
      case DataType::kBFloat16: {
        const float r = RefFloat(RefBf16ToFloat(Load<uint16_t>(d, i)),
                                 RefBf16ToFloat(Load<uint16_t>(s, i)), op);
        Store<uint16_t>(d, i, RefFloatToBf16(r));
        break;
      }
      case DataType::kBool: d[i] = RefBool(d[i], s[i], op); break;
    }
  }
}

// Element i of two buffers is the same value: bits equal, or both NaN.
bool SameAt(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, size_t i, DataType dt) {
  switch (dt) {
    case DataType::kFloat32: {
      const float x = Load<float>(a, i), y = Load<float>(b, i);
      return (std::isnan(x) && std::isnan(y)) || Bits(x) == Bits(y);
    }
    case DataType::kFloat64: {
      const double x = Load<double>(a, i), y = Load<double>(b, i);
      return (std::isnan(x) && std::isnan(y)) || Bits(x) == Bits(y);
    }
    case DataType::kFloat16: {
      const uint16_t x = Load<uint16_t>(a, i), y = Load<uint16_t>(b, i);
      return (HalfIsNan(x) && HalfIsNan(y)) || x == y;
    }
    case DataType::kBFloat16: {
      const uint16_t x = Load<uint16_t>(a, i), y = Load<uint16_t>(b, i);
      return (Bf16IsNan(x) && Bf16IsNan(y)) || x == y;
    }
    default: {
      const size_t w = DataTypeSize(dt);
      return std::memcmp(a.data() + i * w, b.data() + i * w, w) == 0;
    }
  }
}

// Index of the first differing element, or n.
size_t FirstDiff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, size_t n,
                 DataType dt) {
  for (size_t i = 0; i < n; ++i) {
    if (!SameAt(a, b, i, dt)) return i;
  }
  return n;
}

// ---- Data --------------------------------------------------------------------------------------

float RandomFloat(Rng& rng) {
  const uint64_t r = rng.Next() % 100;
  if (r < 3) return std::numeric_limits<float>::quiet_NaN();
  if (r < 5) return (r & 1) ? std::numeric_limits<float>::infinity()
                            : -std::numeric_limits<float>::infinity();
  if (r < 8) return (r & 1) ? 0.0f : -0.0f;
  if (r < 10) return FromBits(static_cast<uint32_t>(rng.Next()) & 0x807fffffu);  // subnormal
  if (r < 15) return FromBits(static_cast<uint32_t>(rng.Next()));  // any bits
  const int exp = static_cast<int>(rng.Next() % 40) - 20;
  return static_cast<float>((rng.Uniform() * 2 - 1) * std::ldexp(1.0, exp));
}

double RandomDouble(Rng& rng) {
  const uint64_t r = rng.Next() % 100;
  if (r < 15) return static_cast<double>(RandomFloat(rng));
  if (r < 20) {
    const uint64_t u = rng.Next();
    double d;
    std::memcpy(&d, &u, 8);
    return d;
  }
  return (rng.Uniform() * 2 - 1) * std::ldexp(1.0, static_cast<int>(rng.Next() % 80) - 40);
}

// 16-bit floats: mostly moderate exponents (so sums and products round rather than overflow),
// some arbitrary patterns (NaN, inf, subnormals).
uint16_t Random16(Rng& rng, bool half) {
  const uint16_t bits = static_cast<uint16_t>(rng.Next());
  if (rng.Next() % 4 == 0) return bits;
  if (half) return static_cast<uint16_t>((bits & 0x83ff) | ((8 + rng.Next() % 14) << 10));
  return static_cast<uint16_t>((bits & 0x807f) | ((110 + rng.Next() % 34) << 7));
}

std::vector<uint8_t> RandomBuffer(Rng& rng, DataType dt, size_t n) {
  std::vector<uint8_t> buf(n * DataTypeSize(dt));
  for (size_t i = 0; i < n; ++i) {
    switch (dt) {
      case DataType::kFloat32: Store<float>(buf, i, RandomFloat(rng)); break;
      case DataType::kFloat64: Store<double>(buf, i, RandomDouble(rng)); break;
      case DataType::kFloat16: Store<uint16_t>(buf, i, Random16(rng, true)); break;
      case DataType::kBFloat16: Store<uint16_t>(buf, i, Random16(rng, false)); break;
      case DataType::kBool: {
        const uint64_t r = rng.Next() % 10;
        buf[i] = r == 0 ? static_cast<uint8_t>(2 + rng.Next() % 254) : static_cast<uint8_t>(r & 1);
        break;
      }
      default: {
        const uint64_t u = rng.Next();
        std::memcpy(buf.data() + i * DataTypeSize(dt), &u, DataTypeSize(dt));
      }
    }
  }
  return buf;
}

const DataType kAllTypes[] = {DataType::kUInt8,   DataType::kInt8,     DataType::kInt32,
                              DataType::kInt64,   DataType::kFloat16,  DataType::kBFloat16,
                              DataType::kFloat32, DataType::kFloat64,  DataType::kBool,
                              DataType::kInt16,   DataType::kUInt16};
const ReduceOp kAllOps[] = {ReduceOp::kSum, ReduceOp::kAverage, ReduceOp::kMin, ReduceOp::kMax,
                            ReduceOp::kProduct};
const size_t kSizes[] = {0, 1, 7, 8, 255, 256, 257, 1000, 1000003};

std::string Name(DataType dt, ReduceOp op, size_t n) {
  return std::string(DataTypeName(dt)) + " " + ReduceOpName(op) + " n=" + std::to_string(n);
}

// ---- Tests -------------------------------------------------------------------------------------

void TestReduceAll() {
  Rng rng(1);
  for (DataType dt : kAllTypes) {
    const size_t w = DataTypeSize(dt);
    for (size_t n : kSizes) {
      const std::vector<uint8_t> a = RandomBuffer(rng, dt, n);
      const std::vector<uint8_t> b = RandomBuffer(rng, dt, n);
      for (ReduceOp op : kAllOps) {
        std::vector<uint8_t> want = a;
        RefReduce(want, b, n, dt, op);
        // Offset by one element inside a larger buffer, so the kernel meets unaligned data.
        std::vector<uint8_t> dst((n + 1) * w), src((n + 1) * w);
        if (n) {
          std::memcpy(dst.data() + w, a.data(), n * w);
          std::memcpy(src.data() + w, b.data(), n * w);
        }
        CpuReduceInto(dst.data() + w, src.data() + w, n, dt, op);
        std::vector<uint8_t> got(dst.begin() + static_cast<long>(w), dst.end());
        const size_t bad = FirstDiff(got, want, n, dt);
        Check(bad == n, Name(dt, op, n) +
                            (bad == n ? "" : " first mismatch at " + std::to_string(bad)));
      }
    }
    // dst == src: op(x, x).
    const size_t n = 1001;
    const std::vector<uint8_t> a = RandomBuffer(rng, dt, n);
    for (ReduceOp op : kAllOps) {
      std::vector<uint8_t> want = a;
      RefReduce(want, a, n, dt, op);
      std::vector<uint8_t> got = a;
      CpuReduceInto(got.data(), got.data(), n, dt, op);
      Check(FirstDiff(got, want, n, dt) == n, Name(dt, op, n) + " in place");
    }
  }
}

void TestNan() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (ReduceOp op : {ReduceOp::kMin, ReduceOp::kMax}) {
    // Many elements so the vector body (not only the scalar tail) sees NaNs on either side.
    const size_t n = 64;
    std::vector<float> d(n, 1.0f), s(n, 2.0f);
    std::vector<double> dd(n, 1.0), sd(n, 2.0);
    std::vector<uint16_t> dh(n, 0x3c00), sh(n, 0x4000), db(n, 0x3f80), sb(n, 0x4000);
    for (size_t i = 0; i < n; i += 3) {
      d[i] = nan;
      dd[i] = static_cast<double>(nan);
      dh[i] = 0x7e00;
      db[i] = 0x7fc0;
    }
    for (size_t i = 1; i < n; i += 3) {
      s[i] = nan;
      sd[i] = static_cast<double>(nan);
      sh[i] = 0x7e00;
      sb[i] = 0xffc1;
    }
    CpuReduceInto(d.data(), s.data(), n, DataType::kFloat32, op);
    CpuReduceInto(dd.data(), sd.data(), n, DataType::kFloat64, op);
    CpuReduceInto(dh.data(), sh.data(), n, DataType::kFloat16, op);
    CpuReduceInto(db.data(), sb.data(), n, DataType::kBFloat16, op);
    bool ok = true;
    for (size_t i = 0; i < n; ++i) {
      const bool want_nan = i % 3 != 2;
      const float want = op == ReduceOp::kMin ? 1.0f : 2.0f;
      ok &= want_nan ? std::isnan(d[i]) : d[i] == want;
      ok &= want_nan ? std::isnan(dd[i]) : dd[i] == want;
      ok &= want_nan ? HalfIsNan(dh[i]) : RefHalfToFloat(dh[i]) == want;
      ok &= want_nan ? Bf16IsNan(db[i]) : RefBf16ToFloat(db[i]) == want;
    }
    Check(ok, std::string("NaN propagation ") + ReduceOpName(op));
  }
  // Sum/product with NaN give NaN; inf - inf is NaN.
  float a[2] = {nan, std::numeric_limits<float>::infinity()};
  float b[2] = {1.0f, -std::numeric_limits<float>::infinity()};
  CpuReduceInto(a, b, 2, DataType::kFloat32, ReduceOp::kSum);
  Check(std::isnan(a[0]) && std::isnan(a[1]), "NaN sum");
}

void TestConversions() {
  // Every half / bfloat16 pattern: decode matches the reference, and float -> 16 bit -> float is
  // the identity for every non-NaN value (NaN stays NaN).
  int half_bad = 0, bf_bad = 0;
  for (uint32_t p = 0; p < 65536; ++p) {
    const uint16_t h = static_cast<uint16_t>(p);
    const float f = HalfToFloat(h);
    const float rf = RefHalfToFloat(h);
    if (HalfIsNan(h)) {
      half_bad += !(std::isnan(f) && HalfIsNan(FloatToHalf(f)));
    } else {
      half_bad += !(Bits(f) == Bits(rf) && FloatToHalf(f) == h);
    }
    const float g = BFloat16ToFloat(h);
    const float rg = RefBf16ToFloat(h);
    if (Bf16IsNan(h)) {
      bf_bad += !(std::isnan(g) && Bf16IsNan(FloatToBFloat16(g)));
    } else {
      bf_bad += !(Bits(g) == Bits(rg) && FloatToBFloat16(g) == h);
    }
  }
  Check(half_bad == 0,
        "float16 round trip of all 65536 patterns (" + std::to_string(half_bad) + " bad)");
  Check(bf_bad == 0,
        "bfloat16 round trip of all 65536 patterns (" + std::to_string(bf_bad) + " bad)");

  // Rounding: exact midpoints between neighbouring values (ties to even) and one float ulp
  // either side, for every pair of neighbours; then random floats.
  std::vector<float> probes;
  for (uint32_t p = 0; p < 0x7c00; ++p) {
    const double lo = RefHalfValue(static_cast<uint16_t>(p));
    const double hi = p + 1 == 0x7c00 ? 65536.0 : RefHalfValue(static_cast<uint16_t>(p + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact in float
    probes.push_back(mid);
    probes.push_back(std::nextafter(mid, 0.0f));
    probes.push_back(std::nextafter(mid, 1e30f));
  }
  for (uint32_t p = 0; p < 0x7f80; ++p) {
    const float mid = FromBits((p << 16) | 0x8000u);
    probes.push_back(mid);
    probes.push_back(std::nextafter(mid, 0.0f));
    probes.push_back(std::nextafter(mid, 1e30f));
  }
  Rng rng(7);
  for (int i = 0; i < 2000000; ++i) probes.push_back(FromBits(static_cast<uint32_t>(rng.Next())));
  for (int i = 0; i < 2000000; ++i) {
    // Exponents around the half range, where the subnormal/normal/overflow paths meet.
    probes.push_back(FromBits((static_cast<uint32_t>(rng.Next()) & 0x807fffffu) |
                              static_cast<uint32_t>(95 + rng.Next() % 60) << 23));
  }
  probes.push_back(std::numeric_limits<float>::infinity());
  probes.push_back(std::numeric_limits<float>::max());
  probes.push_back(std::numeric_limits<float>::denorm_min());
  probes.push_back(std::numeric_limits<float>::quiet_NaN());
  probes.push_back(std::numeric_limits<float>::signaling_NaN());
  half_bad = bf_bad = 0;
  for (float f : probes) {
    for (float x : {f, -f}) {
      const uint16_t h = FloatToHalf(x), rh = RefFloatToHalf(x);
      half_bad += std::isnan(x) ? !HalfIsNan(h) : h != rh;
      const uint16_t b = FloatToBFloat16(x), rb = RefFloatToBf16(x);
      bf_bad += std::isnan(x) ? !Bf16IsNan(b) : b != rb;
    }
  }
  Check(half_bad == 0, "float -> float16 rounding (" + std::to_string(half_bad) + " bad)");
  Check(bf_bad == 0, "float -> bfloat16 rounding (" + std::to_string(bf_bad) + " bad)");

  // The block conversions inside the kernels: max(x, -inf) and min(x, +inf) give x back for
  // every pattern, so both directions of the vectorised conversion see all 65536 values.
  for (DataType dt : {DataType::kFloat16, DataType::kBFloat16}) {
    const bool half = dt == DataType::kFloat16;
    const uint16_t inf = half ? 0x7c00 : 0x7f80;
    for (ReduceOp op : {ReduceOp::kMax, ReduceOp::kMin}) {
      std::vector<uint16_t> d(65536), s(65536, op == ReduceOp::kMax ? (inf | 0x8000) : inf);
      for (uint32_t p = 0; p < 65536; ++p) d[p] = static_cast<uint16_t>(p);
      CpuReduceInto(d.data(), s.data(), d.size(), dt, op);
      int bad = 0;
      for (uint32_t p = 0; p < 65536; ++p) {
        const uint16_t x = static_cast<uint16_t>(p);
        const bool nan = half ? HalfIsNan(x) : Bf16IsNan(x);
        bad += nan ? !(half ? HalfIsNan(d[p]) : Bf16IsNan(d[p])) : d[p] != p;
      }
      Check(bad == 0, std::string(DataTypeName(dt)) + " block round trip via " + ReduceOpName(op));
    }
  }
}

// Reference for CpuScaledCopy on one element.
template <typename T>
T RefScaleInt(T x, double f) {
  const double v = std::trunc(static_cast<double>(x) * f);
  int64_t i;
  if (std::isnan(v)) {
    i = 0;
  } else if (v >= 0x1p63) {
    i = std::numeric_limits<int64_t>::max();
  } else if (v < -0x1p63) {
    i = std::numeric_limits<int64_t>::min();
  } else {
    i = static_cast<int64_t>(v);
  }
  return static_cast<T>(static_cast<uint64_t>(i));
}

template <typename T>
void RefScaleIntAt(std::vector<uint8_t>& d, const std::vector<uint8_t>& s, size_t i, double f) {
  Store<T>(d, i, RefScaleInt<T>(Load<T>(s, i), f));
}

void RefScale(std::vector<uint8_t>& d, const std::vector<uint8_t>& s, size_t n, DataType dt,
              double f) {
  const float ff = static_cast<float>(f);
  if (f == 1.0) {  // a plain copy, not a round trip through double
    d = s;
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    switch (dt) {
      case DataType::kUInt8: RefScaleIntAt<uint8_t>(d, s, i, f); break;
      case DataType::kInt8: RefScaleIntAt<int8_t>(d, s, i, f); break;
      case DataType::kInt32: RefScaleIntAt<int32_t>(d, s, i, f); break;
      case DataType::kInt64: RefScaleIntAt<int64_t>(d, s, i, f); break;
      case DataType::kInt16: RefScaleIntAt<int16_t>(d, s, i, f); break;
      case DataType::kUInt16: RefScaleIntAt<uint16_t>(d, s, i, f); break;
      case DataType::kFloat32: Store<float>(d, i, Load<float>(s, i) * ff); break;
      case DataType::kFloat64: Store<double>(d, i, Load<double>(s, i) * f); break;
      case DataType::kFloat16:
        Store<uint16_t>(d, i, RefFloatToHalf(RefHalfToFloat(Load<uint16_t>(s, i)) * ff));
        break;
      case DataType::kBFloat16:
        Store<uint16_t>(d, i, RefFloatToBf16(RefBf16ToFloat(Load<uint16_t>(s, i)) * ff));
        break;
      case DataType::kBool: d[i] = s[i]; break;
    }
  }
}

void TestScale() {
  Rng rng(3);
  const double factors[] = {1.0, 0.5, 1.0 / 3.0, -2.5, 0.0, 1e-3, 0x1p-20, 7.0, 1e30};
  for (DataType dt : kAllTypes) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}, size_t{100003}}) {
      const std::vector<uint8_t> src = RandomBuffer(rng, dt, n);
      for (double f : factors) {
        if (dt == DataType::kBool && f != 1.0) continue;
        std::vector<uint8_t> want(src.size()), got(src.size());
        RefScale(want, src, n, dt, f);
        CpuScaledCopy(got.data(), src.data(), n, dt, f);
        std::vector<uint8_t> inplace = src;
        CpuScaledCopy(inplace.data(), inplace.data(), n, dt, f);
        const std::string name = std::string("scale ") + DataTypeName(dt) + " by " +
                                 std::to_string(f) + " n=" + std::to_string(n);
        Check(FirstDiff(got, want, n, dt) == n, name);
        Check(FirstDiff(inplace, want, n, dt) == n, name + " in place");
      }
    }
  }
  // Every fp16/bf16 pattern through the block path, with factors that make rounding, subnormal
  // results and overflow.
  for (DataType dt : {DataType::kFloat16, DataType::kBFloat16}) {
    std::vector<uint8_t> src(65536 * 2);
    for (uint32_t p = 0; p < 65536; ++p) Store<uint16_t>(src, p, static_cast<uint16_t>(p));
    for (double f : {0.37, 3.1, 1e-3, 0x1p-20, 65504.0 / 3.0}) {
      std::vector<uint8_t> want(src.size()), got(src.size());
      RefScale(want, src, 65536, dt, f);
      CpuScaledCopy(got.data(), src.data(), 65536, dt, f);
      Check(FirstDiff(got, want, 65536, dt) == 65536,
            std::string("scale all ") + DataTypeName(dt) + " patterns by " + std::to_string(f));
    }
  }
  // Spot values: truncation toward zero, wrap-around, saturation.
  int32_t i32[4] = {7, -7, 5, -5};
  CpuScaledCopy(i32, i32, 4, DataType::kInt32, 0.5);
  Check(i32[0] == 3 && i32[1] == -3 && i32[2] == 2 && i32[3] == -2,
        "int32 scale truncates toward zero");
  uint8_t u8[2] = {200, 255};
  CpuScaledCopy(u8, u8, 2, DataType::kUInt8, 0.5);
  Check(u8[0] == 100 && u8[1] == 127, "uint8 scale");
  int8_t i8[2] = {100, -128};
  CpuScaledCopy(i8, i8, 2, DataType::kInt8, 2.0);
  Check(i8[0] == -56 && i8[1] == 0, "int8 scale wraps");
  int64_t i64[3] = {int64_t{1} << 62, std::numeric_limits<int64_t>::max(), -3};
  CpuScaledCopy(i64, i64, 3, DataType::kInt64, 1.5);
  Check(i64[0] == 6917529027641081856LL && i64[1] == std::numeric_limits<int64_t>::max() &&
            i64[2] == -4,
        "int64 scale (exact, saturating)");
  // factor 1: memmove, overlap allowed, bool allowed.
  uint8_t bytes[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  CpuScaledCopy(bytes + 2, bytes, 6, DataType::kBool, 1.0);
  Check(bytes[2] == 1 && bytes[7] == 6 && bytes[8] == 9, "factor 1 is memmove (overlap)");
  Check(Throws([&] { CpuScaledCopy(bytes, bytes, 3, DataType::kBool, 2.0); }),
        "scaling bool throws");
  Check(Throws([&] { CpuScaledCopy(i32 + 1, i32, 2, DataType::kInt32, 2.0); }),
        "scaled copy with partial overlap throws");
}

template <typename T>
T RefDivide(T x, int64_t d) {
  if (d == -1) return static_cast<T>(0 - static_cast<uint64_t>(x));
  return static_cast<T>(static_cast<int64_t>(x) / d);  // C++ truncates toward zero
}

template <typename T>
void TestDivideInt(DataType dt, Rng& rng) {
  const int64_t divisors[] = {1,  2,  3,  -1, -7, 1000, 65537, (int64_t{1} << 31) + 1,
                              (int64_t{1} << 53) + 1, std::numeric_limits<int64_t>::max(),
                              std::numeric_limits<int64_t>::min()};
  std::vector<T> src;
  // Edge values, and every value for the 8-bit types.
  for (T v : {std::numeric_limits<T>::min(), std::numeric_limits<T>::max(), T(0), T(1), T(-1)}) {
    src.push_back(v);
  }
  if (sizeof(T) == 1) {
    for (int v = 0; v < 256; ++v) src.push_back(static_cast<T>(v));
  }
  for (int i = 0; i < 20000; ++i) {
    T v;
    const uint64_t u = rng.Next() >> (rng.Next() % 64);  // all magnitudes
    std::memcpy(&v, &u, sizeof(T));
    src.push_back(v);
  }
  for (int64_t d : divisors) {
    std::vector<T> got(src.size());
    CpuDivide(got.data(), src.data(), src.size(), dt, d);
    bool ok = true;
    for (size_t i = 0; i < src.size(); ++i) ok &= got[i] == RefDivide(src[i], d);
    std::vector<T> inplace = src;
    CpuDivide(inplace.data(), inplace.data(), src.size(), dt, d);
    ok &= inplace == got;
    Check(ok, std::string("divide ") + DataTypeName(dt) + " by " + std::to_string(d));
  }
}

void TestDivide() {
  Rng rng(5);
  TestDivideInt<uint8_t>(DataType::kUInt8, rng);
  TestDivideInt<int8_t>(DataType::kInt8, rng);
  TestDivideInt<int32_t>(DataType::kInt32, rng);
  TestDivideInt<int64_t>(DataType::kInt64, rng);
  TestDivideInt<int16_t>(DataType::kInt16, rng);
  TestDivideInt<uint16_t>(DataType::kUInt16, rng);
  // Floats multiply by 1/divisor.
  for (DataType dt :
       {DataType::kFloat16, DataType::kBFloat16, DataType::kFloat32, DataType::kFloat64}) {
    const size_t n = 10007;
    const std::vector<uint8_t> src = RandomBuffer(rng, dt, n);
    for (int64_t d : {1, 3, 8, -5}) {
      std::vector<uint8_t> want(src.size()), got(src.size());
      RefScale(want, src, n, dt, 1.0 / static_cast<double>(d));
      CpuDivide(got.data(), src.data(), n, dt, d);
      Check(FirstDiff(got, want, n, dt) == n,
            std::string("divide ") + DataTypeName(dt) + " by " + std::to_string(d));
    }
  }
  uint8_t b[2] = {1, 0};
  Check(Throws([&] { CpuDivide(b, b, 2, DataType::kBool, 2); }), "divide bool throws");
  int32_t x[2] = {1, 2};
  Check(Throws([&] { CpuDivide(x, x, 2, DataType::kInt32, 0); }), "divide by zero throws");
}

void TestBadArguments() {
  int32_t a[4] = {}, b[4] = {};
  Check(Throws([&] { CpuReduceInto(a, b, 4, static_cast<DataType>(42), ReduceOp::kSum); }),
        "unknown dtype throws");
  Check(Throws([&] { CpuReduceInto(a, b, 4, DataType::kInt32, static_cast<ReduceOp>(42)); }),
        "unknown op throws");
  Check(Throws([&] { CpuScaledCopy(a, b, 4, static_cast<DataType>(-1), 2.0); }),
        "unknown dtype in scale throws");
  Check(Throws([&] { CpuReduceInto(a + 1, a, 3, DataType::kInt32, ReduceOp::kSum); }),
        "reduce with partial overlap throws");
  // Count 0 touches nothing: null pointers are accepted, and a real buffer stays as it was.
  Check(!Throws([] {
          CpuReduceInto(nullptr, nullptr, 0, DataType::kFloat32, ReduceOp::kSum);
          CpuScaledCopy(nullptr, nullptr, 0, DataType::kFloat32, 2.0);
          CpuScaledCopy(nullptr, nullptr, 0, DataType::kFloat32, 1.0);
          CpuDivide(nullptr, nullptr, 0, DataType::kInt64, 3);
        }),
        "count 0 with null pointers does not throw");
  int32_t untouched[2] = {7, -7};
  const int32_t source[2] = {1, 1};
  CpuReduceInto(untouched, source, 0, DataType::kInt32, ReduceOp::kSum);
  CpuScaledCopy(untouched, source, 0, DataType::kInt32, 2.0);
  CpuDivide(untouched, source, 0, DataType::kInt32, 3);
  Check(untouched[0] == 7 && untouched[1] == -7, "count 0 leaves the output untouched");
}

void TestHostMemory() {
  HostMemoryOps& mem = HostMemory();
  Check(&mem == &HostMemory(), "HostMemory() is one instance");
  std::shared_ptr<void> zero = mem.Allocate(0);
  std::shared_ptr<void> zero2 = mem.Allocate(0);
  Check(zero != nullptr && zero2 != nullptr && zero.get() != zero2.get(), "Allocate(0) non-null");
  bool aligned = true;
  for (size_t bytes : {size_t{1}, size_t{63}, size_t{64}, size_t{1000}, size_t{1} << 20}) {
    std::shared_ptr<void> p = mem.Allocate(bytes);
    aligned &= p != nullptr && reinterpret_cast<uintptr_t>(p.get()) % 64 == 0;
    std::memset(p.get(), 0xab, bytes);  // the whole size is writable
  }
  Check(aligned, "Allocate is 64-byte aligned");

  std::shared_ptr<void> buf = mem.Allocate(8 * sizeof(float));
  float* f = static_cast<float*>(buf.get());
  for (int i = 0; i < 8; ++i) f[i] = static_cast<float>(i);
  mem.Copy(f + 1, f, 4 * sizeof(float));  // overlapping
  Check(f[1] == 0 && f[4] == 3 && f[5] == 5, "Copy handles overlap");
  float g[3] = {1, 2, 3}, h[3] = {10, 20, 30};
  mem.ReduceInto(g, h, 3, DataType::kFloat32, ReduceOp::kSum);
  Check(g[0] == 11 && g[2] == 33, "ReduceInto");
  mem.ScaledCopy(h, g, 3, DataType::kFloat32, 0.5);
  Check(h[0] == 5.5f && h[2] == 16.5f, "ScaledCopy");
}

}  // namespace

int main() {
  TestReduceAll();
  TestNan();
  TestConversions();
  TestScale();
  TestDivide();
  TestBadArguments();
  TestHostMemory();
  return fusecomm_test::Summary("");
}
