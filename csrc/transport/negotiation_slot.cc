#include "transport/negotiation_slot.h"

#include "reduce/cpu_reduce.h"

namespace fusecomm {

uint64_t NegotiationSlot::Header(uint32_t position, DataType dtype, ReduceOp op, uint32_t count) {
  return (static_cast<uint64_t>(position) + 1) << 32 |
         static_cast<uint64_t>(static_cast<uint8_t>(dtype)) << 24 |
         static_cast<uint64_t>(static_cast<uint8_t>(op)) << 16 | (count & 0xffff);
}

void CombineNegotiationSlots(const NegotiationSlot& in, NegotiationSlot& inout) {
  if (in.header != inout.header) {
    inout.header = 0;
    return;
  }
  if (inout.header == 0) return;
  const ReduceOp op = inout.op() == ReduceOp::kAverage ? ReduceOp::kSum : inout.op();
  CpuReduceInto(inout.payload, in.payload, inout.count(), inout.dtype(), op);
}

}  // namespace fusecomm
