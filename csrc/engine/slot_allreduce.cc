#include "engine/slot_allreduce.h"

#include "reduce/cpu_reduce.h"

namespace fusecomm {

bool RidesInSlot(const Request& request) {
  const TensorSpec& spec = request.spec;
  const size_t bytes = spec.num_bytes();
  return request.caller_waits && !request.stand_in && spec.op_type == OpType::kAllreduce &&
         spec.device < 0 && spec.reduce_op != ReduceOp::kAdasum &&
         spec.algorithm == AllreduceAlgorithm::kAuto && bytes > 0 &&
         bytes <= NegotiationSlot::kPayloadBytes && spec.argument_error.empty();
}

void OfferInSlot(const Request& request, int position, NegotiationSlot& slot) {
  const TensorSpec& spec = request.spec;
  const auto count = static_cast<uint32_t>(spec.num_elements());
  slot.header = NegotiationSlot::Header(static_cast<uint32_t>(position), spec.dtype,
                                        spec.reduce_op, count);
  CpuScaledCopy(slot.payload, request.input, count, spec.dtype, spec.prescale);
}

void TakeFromSlot(NegotiationSlot& slot, Request& request, int ranks) {
  const TensorSpec& spec = request.spec;
  double factor = spec.postscale;
  if (spec.reduce_op == ReduceOp::kAverage) {
    if (IsFloatingPoint(spec.dtype)) {
      factor /= ranks;
    } else {  // integers: exact, truncating, as the executor divides them
      CpuDivide(slot.payload, slot.payload, slot.count(), spec.dtype, ranks);
    }
  }
  CpuScaledCopy(request.output, slot.payload, slot.count(), spec.dtype, factor);
}

}  // namespace fusecomm
