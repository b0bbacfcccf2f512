// A fixed slot in every negotiation message that carries one small all-reduce's data. When every
// rank puts the same tensor in it (same response-cache position, dtype, op and count), the
// negotiation's own all-reduce returns that tensor's reduction, and the tensor needs no data
// collective of its own: one collective per small synchronous all-reduce instead of two, as
// MPI_Allreduce itself would run. When any rank put something else or nothing, the slot comes
// back empty and the tensor runs as usual.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "common/types.h"

namespace fusecomm {

struct NegotiationSlot {
  static constexpr size_t kPayloadBytes = 128;
  static constexpr size_t kWords = 1 + kPayloadBytes / sizeof(uint64_t);

  // 0: empty. Otherwise position + 1 (32 bits), dtype, op (8 bits each), count (16 bits): two
  // ranks' slots hold the same reduction exactly when their headers are equal.
  uint64_t header = 0;
  uint64_t payload[kPayloadBytes / sizeof(uint64_t)] = {};

  static uint64_t Header(uint32_t position, DataType dtype, ReduceOp op, uint32_t count);
  DataType dtype() const { return static_cast<DataType>((header >> 24) & 0xff); }
  ReduceOp op() const { return static_cast<ReduceOp>((header >> 16) & 0xff); }
  uint32_t count() const { return static_cast<uint32_t>(header & 0xffff); }
  uint32_t position() const { return static_cast<uint32_t>(header >> 32) - 1; }
};
static_assert(sizeof(NegotiationSlot) == NegotiationSlot::kWords * sizeof(uint64_t) &&
                  std::is_trivially_copyable_v<NegotiationSlot>,
              "the slot travels as plain 64-bit words");

// inout = in combined with inout, as the negotiation's all-reduce applies it: equal non-empty
// headers reduce the payloads (Average as Sum: the caller scales); unequal ones empty the slot.
// Commutative and associative, so MPI may apply it in any order.
void CombineNegotiationSlots(const NegotiationSlot& in, NegotiationSlot& inout);

}  // namespace fusecomm
