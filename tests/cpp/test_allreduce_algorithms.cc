// Multi-rank test of the all-reduce algorithms of csrc/collectives over the MPI transport.
// Every rank generates every rank's input from a seeded RNG and reduces them with a plain scalar
// loop (no MPI_Allreduce), so results are checked bit-exactly (integers wrap; float data are
// small integers, halves and powers of two, exact in any order). The traffic each rank put on the
// wire (counted by the Comm) is checked against the algorithm's cost function, and where the
// split is even the busiest rank's steps and bytes against REFERENCE.md's closed forms.
//
// Virtual nodes: FUSECOMM_LOCAL_SIZE consecutive ranks per node (default 2); grid width:
// FUSECOMM_TORUS_X (default the local size).
// Build (OMPI_SKIP_MPICXX keeps Open MPI's C++ bindings, and their -Wextra warnings, out):
//        mpicxx -std=c++17 -O2 -Wall -Wextra -DOMPI_SKIP_MPICXX=1 -Icsrc
//          csrc/collectives/{pipeline,ring_allreduce,rhd_allreduce,hierarchical_allreduce,
//          torus2d_allreduce,shm_allreduce}.cc csrc/common/types.cc
//          csrc/reduce/cpu_reduce.cc csrc/transport/{host_memory,shared_segment,abort}.cc
//          csrc/transport/mpi/{mpi_comm,mpi_wait}.cc tests/cpp/test_allreduce_algorithms.cc
//          -o test_algos
// Run:    mpirun -np 5 -x FUSECOMM_LOCAL_SIZE=2 -x FUSECOMM_TORUS_X=3 test_algos
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "collectives/allreduce.h"
#include "transport/topology.h"
#include "common/types.h"
#include "reduce/cpu_reduce.h"
#include "transport/mpi/mpi_comm.h"

using namespace fusecomm;

namespace {

// ---- Topology from virtual nodes of consecutive ranks.

// The shared-memory all-reduce's slots here: small, so that a few thousand elements already
// take several pieces, alternating between the two slot sets, the last one partial.
constexpr size_t kTestSlotBytes = 4096;

struct TestTopology {
  std::unique_ptr<MpiComm> world;
  std::unique_ptr<MpiComm> shared;  // all ranks, with a SharedSegment (one machine): slots only
  std::unique_ptr<MpiComm> shared_direct;  // the same, reading peers' buffers at every size
  Topology topo;
  int local_size = 1;  // FUSECOMM_LOCAL_SIZE, clamped to the rank count
  int node = 0;

  // Every communicator an algorithm may send on: their counters together are this rank's traffic.
  std::vector<Comm*> Comms() const {
    std::vector<Comm*> comms;
    for (Comm* c : {topo.global, topo.local.get(), topo.cross.get(), topo.torus_row.get(),
                    topo.torus_col.get(), topo.torus_col_full.get(),
                    static_cast<Comm*>(shared.get()), static_cast<Comm*>(shared_direct.get())}) {
      if (c != nullptr) comms.push_back(c);
    }
    return comms;
  }
};

int EnvInt(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

void BuildTopology(TestTopology* t) {
  t->world = std::make_unique<MpiComm>(MPI_COMM_WORLD, false);
  Comm& world = *t->world;
  const int p = world.size();
  const int rank = world.rank();
  t->local_size = std::clamp(EnvInt("FUSECOMM_LOCAL_SIZE", 2), 1, p);
  const int k = t->local_size;
  const int x = std::max(1, EnvInt("FUSECOMM_TORUS_X", k));
  t->node = rank / k;

  Topology& topo = t->topo;
  topo.global = &world;
  topo.local = world.Split(t->node, rank);
  topo.cross = world.Split(rank % k, rank);
  topo.torus_x = x;
  topo.torus_row = world.Split(rank / x, rank);
  topo.torus_col = world.Split(rank % x, rank);
  const int full_rows = p / x;
  topo.torus_col_full = world.Split(rank / x < full_rows ? rank % x : -1, rank);
  for (int first = 0; first < p; first += k) topo.node_sizes.push_back(std::min(k, p - first));
  topo.homogeneous = p % k == 0;
  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  t->shared = std::make_unique<MpiComm>(dup, true);
  t->shared->AttachSharedSegment(kTestSlotBytes);
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  t->shared_direct = std::make_unique<MpiComm>(dup, true);
  t->shared_direct->AttachSharedSegment(kTestSlotBytes, 0);
}

// ---- Inputs and the scalar reference.

uint64_t Mix(uint64_t z) {  // splitmix64
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Values whose reductions are exact in every dtype and in any order.
double FloatValue(ReduceOp op, bool half_precision, uint64_t bits) {
  static const double kPowers[] = {-2.0, -1.0, -0.5, 0.5, 1.0, 2.0};
  switch (op) {
    case ReduceOp::kProduct:
      return kPowers[bits % 6];
    case ReduceOp::kMin:
    case ReduceOp::kMax:
      return half_precision ? static_cast<double>(static_cast<int>(bits % 129) - 64) / 4.0
                            : (static_cast<double>(bits >> 11) * 0x1p-53 - 0.5) * 2000.0;
    default:
      return half_precision ? static_cast<double>(static_cast<int>(bits % 17) - 8)
                            : static_cast<double>(static_cast<int>(bits % 8193) - 4096) / 16.0;
  }
}

std::vector<uint8_t> MakeInput(DataType dtype, ReduceOp op, int rank, size_t count,
                               uint64_t seed) {
  const size_t elem = DataTypeSize(dtype);
  std::vector<uint8_t> out(count * elem + 1);  // +1: never a zero-size vector's null data()
  for (size_t i = 0; i < count; ++i) {
    const uint64_t bits = Mix(seed ^ (static_cast<uint64_t>(rank) << 40) ^ Mix(i));
    void* dst = out.data() + i * elem;
    switch (dtype) {
      case DataType::kUInt8:
      case DataType::kInt8:
      case DataType::kInt32:
      case DataType::kInt64:
      case DataType::kInt16:
      case DataType::kUInt16:
        std::memcpy(dst, &bits, elem);
        break;
      case DataType::kBool:
        out[i] = bits % 4 != 0;
        break;
      case DataType::kFloat16: {
        uint16_t h = FloatToHalf(static_cast<float>(FloatValue(op, true, bits)));
        std::memcpy(dst, &h, 2);
        break;
      }
      case DataType::kBFloat16: {
        uint16_t b = FloatToBFloat16(static_cast<float>(FloatValue(op, true, bits)));
        std::memcpy(dst, &b, 2);
        break;
      }
      case DataType::kFloat32: {
        float f = static_cast<float>(FloatValue(op, false, bits));
        std::memcpy(dst, &f, 4);
        break;
      }
      case DataType::kFloat64: {
        double d = FloatValue(op, false, bits);
        std::memcpy(dst, &d, 8);
        break;
      }
    }
  }
  return out;
}

template <typename T>
T Combine(T a, T b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kMin: return std::min(a, b);
    case ReduceOp::kMax: return std::max(a, b);
    case ReduceOp::kProduct: return a * b;
    default: return a + b;
  }
}

// Integers: Sum and Product in the unsigned type, so that overflow wraps as the kernels do.
template <typename T, typename Unsigned>
void ReduceIntegers(void* acc, const void* in, size_t count, ReduceOp op) {
  for (size_t i = 0; i < count; ++i) {
    T a, b;
    std::memcpy(&a, static_cast<char*>(acc) + i * sizeof(T), sizeof(T));
    std::memcpy(&b, static_cast<const char*>(in) + i * sizeof(T), sizeof(T));
    T r;
    if (op == ReduceOp::kMin || op == ReduceOp::kMax) {
      r = Combine(a, b, op);
    } else {
      // Widen through unsigned int first: uint8 * uint8 would promote to (signed) int.
      using Wide = std::conditional_t<(sizeof(Unsigned) < sizeof(unsigned)), unsigned, Unsigned>;
      Wide u = Combine(static_cast<Wide>(static_cast<Unsigned>(a)),
                       static_cast<Wide>(static_cast<Unsigned>(b)), op);
      r = static_cast<T>(static_cast<Unsigned>(u));
    }
    std::memcpy(static_cast<char*>(acc) + i * sizeof(T), &r, sizeof(T));
  }
}

template <typename T>
void ReduceFloats(void* acc, const void* in, size_t count, ReduceOp op) {
  for (size_t i = 0; i < count; ++i) {
    T a, b;
    std::memcpy(&a, static_cast<char*>(acc) + i * sizeof(T), sizeof(T));
    std::memcpy(&b, static_cast<const char*>(in) + i * sizeof(T), sizeof(T));
    T r = Combine(a, b, op);
    std::memcpy(static_cast<char*>(acc) + i * sizeof(T), &r, sizeof(T));
  }
}

void ReduceHalves(void* acc, const void* in, size_t count, ReduceOp op, bool bfloat) {
  for (size_t i = 0; i < count; ++i) {
    uint16_t a, b;
    std::memcpy(&a, static_cast<char*>(acc) + 2 * i, 2);
    std::memcpy(&b, static_cast<const char*>(in) + 2 * i, 2);
    float fa = bfloat ? BFloat16ToFloat(a) : HalfToFloat(a);
    float fb = bfloat ? BFloat16ToFloat(b) : HalfToFloat(b);
    float fr = Combine(fa, fb, op);
    uint16_t r = bfloat ? FloatToBFloat16(fr) : FloatToHalf(fr);
    std::memcpy(static_cast<char*>(acc) + 2 * i, &r, 2);
  }
}

void ReferenceReduce(void* acc, const void* in, size_t count, DataType dtype, ReduceOp op) {
  switch (dtype) {
    case DataType::kUInt8: return ReduceIntegers<uint8_t, uint8_t>(acc, in, count, op);
    case DataType::kInt8: return ReduceIntegers<int8_t, uint8_t>(acc, in, count, op);
    case DataType::kInt32: return ReduceIntegers<int32_t, uint32_t>(acc, in, count, op);
    case DataType::kInt64: return ReduceIntegers<int64_t, uint64_t>(acc, in, count, op);
    case DataType::kInt16: return ReduceIntegers<int16_t, uint16_t>(acc, in, count, op);
    case DataType::kUInt16: return ReduceIntegers<uint16_t, uint16_t>(acc, in, count, op);
    case DataType::kFloat16: return ReduceHalves(acc, in, count, op, false);
    case DataType::kBFloat16: return ReduceHalves(acc, in, count, op, true);
    case DataType::kFloat32: return ReduceFloats<float>(acc, in, count, op);
    case DataType::kFloat64: return ReduceFloats<double>(acc, in, count, op);
    case DataType::kBool: {
      uint8_t* a = static_cast<uint8_t*>(acc);
      const uint8_t* b = static_cast<const uint8_t*>(in);
      const bool is_or = op == ReduceOp::kSum || op == ReduceOp::kMax;
      for (size_t i = 0; i < count; ++i) a[i] = is_or ? (a[i] || b[i]) : (a[i] && b[i]);
      return;
    }
  }
}

std::vector<uint8_t> Reference(DataType dtype, ReduceOp op, int ranks, size_t count,
                               uint64_t seed) {
  std::vector<uint8_t> acc = MakeInput(dtype, op, 0, count, seed);
  for (int r = 1; r < ranks; ++r) {
    ReferenceReduce(acc.data(), MakeInput(dtype, op, r, count, seed).data(), count, dtype, op);
  }
  return acc;
}

double ElementValue(const uint8_t* p, DataType dtype) {
  uint16_t h;
  switch (dtype) {
    case DataType::kUInt8: return *p;
    case DataType::kInt8: return static_cast<int8_t>(*p);
    case DataType::kBool: return *p;
    case DataType::kInt32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case DataType::kInt64: { int64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
    case DataType::kInt16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case DataType::kUInt16: { uint16_t v; std::memcpy(&v, p, 2); return v; }
    case DataType::kFloat16: std::memcpy(&h, p, 2); return HalfToFloat(h);
    case DataType::kBFloat16: std::memcpy(&h, p, 2); return BFloat16ToFloat(h);
    case DataType::kFloat32: { float v; std::memcpy(&v, p, 4); return v; }
    case DataType::kFloat64: { double v; std::memcpy(&v, p, 8); return v; }
  }
  return 0;
}

// Exact comparison; floats by value (so that -0 == +0), everything else by bits.
std::optional<size_t> FirstMismatch(const uint8_t* got, const uint8_t* want, size_t count,
                                    DataType dtype) {
  const size_t elem = DataTypeSize(dtype);
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* g = got + i * elem;
    const uint8_t* w = want + i * elem;
    const bool same = IsFloatingPoint(dtype) ? ElementValue(g, dtype) == ElementValue(w, dtype)
                                             : std::memcmp(g, w, elem) == 0;
    if (!same) return i;
  }
  return std::nullopt;
}

// ---- The algorithms under test and their expected traffic.

struct Expected {
  AlgorithmCost mine;                   // this rank, from the cost function
  std::optional<AlgorithmCost> closed;  // busiest rank, REFERENCE.md closed form (even splits)
};

struct Algorithm {
  const char* name;
  std::function<void(void* buf, size_t count, DataType, ReduceOp, size_t segment_bytes)> run;
  std::function<Expected(size_t count, size_t elem)> expected;
};

int CeilLog2(int v) {
  int lg = 0;
  while ((1 << lg) < v) ++lg;
  return lg;
}

// The closed forms, for n elements of `elem` bytes: ring steps and bytes over q ranks.
AlgorithmCost RingClosedForm(int q, uint64_t n, uint64_t elem) {
  if (q <= 1) return {};
  return {2 * static_cast<uint64_t>(q - 1), 2 * n * (q - 1) / q * elem};
}

std::vector<Algorithm> MakeAlgorithms(const TestTopology& t) {
  const Topology& topo = t.topo;
  Comm& world = *topo.global;
  const int p = world.size();
  const int rank = world.rank();
  const int k = t.local_size;
  const int m = static_cast<int>(topo.node_sizes.size());
  const int x = topo.torus_x;
  const int lr = rank % k;
  const int node = t.node;
  std::vector<Algorithm> algos;

  algos.push_back({"ring",
                   [&world](void* b, size_t n, DataType d, ReduceOp o, size_t s) {
                     RingAllreduce(world, b, n, d, o, s);
                   },
                   [=](size_t n, size_t e) {
                     Expected ex{RingAllreduceCost(p, rank, n, e), std::nullopt};
                     if (n % p == 0) ex.closed = RingClosedForm(p, n, e);
                     return ex;
                   }});

  if (t.shared->shared_segment() != nullptr) {
    // Nothing goes on the wire: two synchronizations a piece (three for a single copy) are its
    // only steps.
    for (MpiComm* comm : {t.shared.get(), t.shared_direct.get()}) {
      const size_t min_bytes = comm->shared_segment()->single_copy_min_bytes();
      algos.push_back({min_bytes == SIZE_MAX ? "shm" : "shm (single copy)",
                       [comm](void* b, size_t n, DataType d, ReduceOp o, size_t) {
                         SharedMemoryAllreduce(*comm, b, n, d, o);
                       },
                       [=](size_t n, size_t e) {
                         const AlgorithmCost c =
                             SharedMemoryAllreduceCost(p, n, e, kTestSlotBytes, min_bytes);
                         return Expected{{c.steps, 0}, std::nullopt};
                       }});
    }
    // This machine lets a process read its peers' memory (Linux's default for one user): the
    // second comm must have found that, or its entry above tested the slots twice.
    if (t.shared_direct->shared_segment()->single_copy_min_bytes() != 0) {
      algos.push_back({"shm (single copy was not enabled)",
                       [](void*, size_t, DataType, ReduceOp, size_t) {
                         throw std::runtime_error("ProbePeerReads failed: process_vm_readv "
                                                  "cannot read the peers here");
                       },
                       [](size_t, size_t) { return Expected{}; }});
    }
  } else {
    // All ranks of this test run on one machine, so the segment must exist.
    algos.push_back({"shm (no shared segment was mapped)",
                     [](void*, size_t, DataType, ReduceOp, size_t) {
                       throw std::runtime_error("MpiComm::AttachSharedSegment mapped nothing");
                     },
                     [](size_t, size_t) { return Expected{}; }});
  }

  algos.push_back({"rhd",
                   [&world](void* b, size_t n, DataType d, ReduceOp o, size_t s) {
                     RecursiveHalvingDoublingAllreduce(world, b, n, d, o, s);
                   },
                   [=](size_t n, size_t e) {
                     Expected ex{RecursiveHalvingDoublingAllreduceCost(p, rank, n, e),
                                 std::nullopt};
                     const int lg = CeilLog2(p + 1) - 1;  // floor(lg p)
                     const uint64_t p2 = uint64_t{1} << lg;
                     const bool extra = p2 != static_cast<uint64_t>(p);
                     if (n % p2 == 0) {
                       ex.closed = AlgorithmCost{2 * static_cast<uint64_t>(lg) + (extra ? 2 : 0),
                                                 (2 * n * (p2 - 1) / p2 + (extra ? n : 0)) * e};
                     }
                     return ex;
                   }});

  algos.push_back({"hierarchical",
                   [&topo](void* b, size_t n, DataType d, ReduceOp o, size_t s) {
                     HierarchicalAllreduce(topo, b, n, d, o, s);
                   },
                   [=, sizes = topo.node_sizes](size_t n, size_t e) {
                     Expected ex{HierarchicalAllreduceCost(sizes, node, lr, n, e), std::nullopt};
                     // Busiest: the leader of the largest node (node 0).
                     if (n % m == 0) {
                       const uint64_t lg = static_cast<uint64_t>(CeilLog2(sizes[0]));
                       AlgorithmCost ring = RingClosedForm(m, n, e);
                       ex.closed = AlgorithmCost{2 * lg + ring.steps, lg * n * e + ring.bytes_sent};
                     }
                     return ex;
                   }});

  algos.push_back({"hierarchical_scatter",
                   [&topo](void* b, size_t n, DataType d, ReduceOp o, size_t s) {
                     HierarchicalScatterAllreduce(topo, b, n, d, o, s);
                   },
                   [=, sizes = topo.node_sizes, homogeneous = topo.homogeneous](size_t n,
                                                                                size_t e) {
                     Expected ex{HierarchicalScatterAllreduceCost(sizes, node, lr, rank, n, e),
                                 std::nullopt};
                     if (!homogeneous) {
                       if (n % p == 0) ex.closed = RingClosedForm(p, n, e);
                     } else if (n % (static_cast<size_t>(k) * m) == 0) {
                       ex.closed = RingClosedForm(k, n, e) + RingClosedForm(m, n / k, e);
                     }
                     return ex;
                   }});

  algos.push_back({"torus2d",
                   [&topo](void* b, size_t n, DataType d, ReduceOp o, size_t s) {
                     Torus2DAllreduce(topo, b, n, d, o, s);
                   },
                   [=](size_t n, size_t e) {
                     Expected ex{Torus2DAllreduceCost(p, x, rank, n, e), std::nullopt};
                     const int y = p / x;  // full rows
                     const bool partial = p % x != 0;
                     if (y == 0) {
                       if (n % p == 0) ex.closed = RingClosedForm(p, n, e);
                     } else if (n % (static_cast<size_t>(x) * y) == 0) {
                       ex.closed = RingClosedForm(x, n, e) + RingClosedForm(y, n / x, e);
                       if (partial) *ex.closed = *ex.closed + AlgorithmCost{2, n * e};
                     }
                     return ex;
                   }});
  return algos;
}

// ---- The driver.

struct Tally {
  int passed = 0;
  int failed = 0;
};

bool AllRanks(bool ok) {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

AlgorithmCost MaxOverRanks(AlgorithmCost c) {
  uint64_t mine[2] = {c.steps, c.bytes_sent}, all[2] = {0, 0};
  MPI_Allreduce(mine, all, 2, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  return {all[0], all[1]};
}

std::string Describe(AlgorithmCost c) {
  return std::to_string(c.steps) + " steps, " + std::to_string(c.bytes_sent) + " bytes";
}

void RunCase(const TestTopology& t, const Algorithm& algo, DataType dtype, ReduceOp op,
             size_t count, size_t segment_bytes, const std::vector<uint8_t>& input,
             const std::vector<uint8_t>& want, Tally* tally) {
  const int rank = t.world->rank();
  const std::string label = std::string(algo.name) + " " + DataTypeName(dtype) + " " +
                            ReduceOpName(op) + " count=" + std::to_string(count) +
                            " segment=" + std::to_string(segment_bytes);
  const size_t elem = DataTypeSize(dtype);
  std::vector<uint8_t> buf = input;
  for (Comm* c : t.Comms()) c->traffic() = TrafficCounters{};

  bool ok = true;
  try {
    algo.run(buf.data(), count, dtype, op, segment_bytes);
  } catch (const std::exception& e) {
    std::printf("[rank %d] %s: threw: %s\n", rank, label.c_str(), e.what());
    ok = false;
  }
  if (auto i = FirstMismatch(buf.data(), want.data(), count, dtype)) {
    std::printf("[rank %d] %s: element %zu is %g, expected %g\n", rank, label.c_str(), *i,
                ElementValue(buf.data() + *i * elem, dtype),
                ElementValue(want.data() + *i * elem, dtype));
    ok = false;
  }

  AlgorithmCost measured;
  for (Comm* c : t.Comms()) {
    measured.steps += c->traffic().steps;
    measured.bytes_sent += c->traffic().bytes_sent;
  }
  const Expected expected = algo.expected(count, elem);
  if (measured.steps != expected.mine.steps ||
      measured.bytes_sent != expected.mine.bytes_sent) {
    std::printf("[rank %d] %s: sent %s, cost function says %s\n", rank, label.c_str(),
                Describe(measured).c_str(), Describe(expected.mine).c_str());
    ok = false;
  }
  const AlgorithmCost busiest = MaxOverRanks(measured);
  if (expected.closed && count > 0 && t.world->size() > 1 &&
      (busiest.steps != expected.closed->steps ||
       busiest.bytes_sent != expected.closed->bytes_sent)) {
    if (rank == 0) {
      std::printf("%s: busiest rank sent %s, REFERENCE.md closed form says %s\n", label.c_str(),
                  Describe(busiest).c_str(), Describe(*expected.closed).c_str());
    }
    ok = false;
  }

  if (AllRanks(ok)) {
    ++tally->passed;
  } else {
    ++tally->failed;
    if (rank == 0) std::printf("FAIL: %s\n", label.c_str());
  }
}

// The ring building blocks on arbitrary (uneven, partly empty) blocks.
void RunRingBlocksCase(const TestTopology& t, DataType dtype, ReduceOp op, size_t segment_bytes,
                       uint64_t seed, Tally* tally) {
  Comm& world = *t.world;
  const int p = world.size();
  const int rank = world.rank();
  const size_t elem = DataTypeSize(dtype);
  std::vector<size_t> blocks(p);
  for (int i = 0; i < p; ++i) blocks[i] = (i % 3 == 1) ? 0 : Mix(seed + i) % 300;
  std::vector<size_t> offsets(p + 1, 0);
  for (int i = 0; i < p; ++i) offsets[i + 1] = offsets[i] + blocks[i];
  const size_t total = offsets[p];
  const std::vector<uint8_t> input = MakeInput(dtype, op, rank, total, seed);
  const std::vector<uint8_t> want = Reference(dtype, op, p, total, seed);
  const std::string label = std::string("ring blocks ") + DataTypeName(dtype) + " " +
                            ReduceOpName(op) + " total=" + std::to_string(total) +
                            " segment=" + std::to_string(segment_bytes);

  std::vector<uint8_t> buf = input;
  world.traffic() = TrafficCounters{};
  bool ok = true;
  RingReduceScatter(world, buf.data(), blocks, dtype, op, segment_bytes);
  const size_t mine = offsets[rank] * elem;
  if (auto i = FirstMismatch(buf.data() + mine, want.data() + mine, blocks[rank], dtype)) {
    std::printf("[rank %d] %s: reduce-scatter wrong at element %zu of my block\n", rank,
                label.c_str(), *i);
    ok = false;
  }
  // All-gather from a buffer holding only the reference's own block, garbage elsewhere.
  std::vector<uint8_t> gathered(want.size(), 0xA5);
  std::memcpy(gathered.data() + mine, want.data() + mine, blocks[rank] * elem);
  RingAllgather(world, gathered.data(), blocks, dtype, segment_bytes);
  if (auto i = FirstMismatch(gathered.data(), want.data(), total, dtype)) {
    std::printf("[rank %d] %s: all-gather wrong at element %zu\n", rank, label.c_str(), *i);
    ok = false;
  }
  const AlgorithmCost expected = RingReduceScatterCost(p, rank, blocks, elem) +
                                 RingAllgatherCost(p, rank, blocks, elem);
  const AlgorithmCost measured{world.traffic().steps, world.traffic().bytes_sent};
  if (measured.steps != expected.steps || measured.bytes_sent != expected.bytes_sent) {
    std::printf("[rank %d] %s: sent %s, cost function says %s\n", rank, label.c_str(),
                Describe(measured).c_str(), Describe(expected).c_str());
    ok = false;
  }
  if (AllRanks(ok)) {
    ++tally->passed;
  } else {
    ++tally->failed;
    if (rank == 0) std::printf("FAIL: %s\n", label.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Tally tally;
  {
    TestTopology t;
    BuildTopology(&t);
    const int p = t.world->size();
    const int rank = t.world->rank();
    const std::vector<Algorithm> algos = MakeAlgorithms(t);
    const DataType all_types[] = {DataType::kUInt8,   DataType::kInt8,     DataType::kInt32,
                                  DataType::kInt64,   DataType::kFloat16,  DataType::kBFloat16,
                                  DataType::kFloat32, DataType::kFloat64,  DataType::kBool,
                                  DataType::kInt16,   DataType::kUInt16};
    const ReduceOp all_ops[] = {ReduceOp::kSum, ReduceOp::kMin, ReduceOp::kMax,
                                ReduceOp::kProduct};

    // What runs: (counts, dtypes, ops, segment sizes). Every dtype x op on small counts with
    // tiny segments (many segments per block) and the default; bigger counts on fewer types.
    struct Sweep {
      std::vector<size_t> counts;
      std::vector<DataType> dtypes;
      std::vector<ReduceOp> ops;
      std::vector<size_t> segments;
    };
    const std::vector<DataType> every_type(std::begin(all_types), std::end(all_types));
    const std::vector<ReduceOp> every_op(std::begin(all_ops), std::end(all_ops));
    const std::vector<Sweep> sweeps = {
        {{0, 1, 2, 3, 7, 13, 1000}, every_type, every_op, {kDefaultSegmentBytes, 24}},
        {{65537}, every_type, {ReduceOp::kSum, ReduceOp::kMax}, {kDefaultSegmentBytes}},
        {{65537}, {DataType::kFloat32, DataType::kInt64}, {ReduceOp::kProduct}, {4096}},
        {{(size_t{1} << 20) + 3},
         {DataType::kFloat32, DataType::kBFloat16, DataType::kInt32},
         {ReduceOp::kSum},
         {kDefaultSegmentBytes}},
    };

    uint64_t seed = 12345;
    for (const Sweep& sweep : sweeps) {
      for (size_t count : sweep.counts) {
        for (DataType dtype : sweep.dtypes) {
          for (ReduceOp op : sweep.ops) {
            ++seed;
            const std::vector<uint8_t> input = MakeInput(dtype, op, rank, count, seed);
            const std::vector<uint8_t> want = Reference(dtype, op, p, count, seed);
            for (const Algorithm& algo : algos) {
              for (size_t segment : sweep.segments) {
                RunCase(t, algo, dtype, op, count, segment, input, want, &tally);
              }
            }
          }
        }
      }
    }
    for (size_t segment : {size_t{8}, size_t{64}, kDefaultSegmentBytes}) {
      RunRingBlocksCase(t, DataType::kInt32, ReduceOp::kSum, segment, ++seed, &tally);
      RunRingBlocksCase(t, DataType::kFloat16, ReduceOp::kMax, segment, ++seed, &tally);
    }

    if (rank == 0) {
      std::printf("np=%d local_size=%d torus_x=%d: %d passed, %d failed\n", p, t.local_size,
                  t.topo.torus_x, tally.passed, tally.failed);
    }
  }
  MPI_Finalize();
  return tally.failed == 0 ? 0 : 1;
}
