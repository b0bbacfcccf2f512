// Element-wise kernels on host memory. Loops are written so the compiler vectorises them;
// float16 and bfloat16 are widened to float32 for the arithmetic and rounded back once.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/types.h"

namespace fusecomm {

// dst[i] = op(dst[i], src[i]) for i < count. kAverage is reduced as kSum (the caller scales).
// bool: Sum/Max = logical or, Min/Product = logical and.
void CpuReduceInto(void* dst, const void* src, size_t count, DataType dtype, ReduceOp op);

// dst[i] = src[i] * factor (src may equal dst). Integers: the product is truncated toward zero;
// factor == 1 is a plain copy (memmove when src != dst).
void CpuScaledCopy(void* dst, const void* src, size_t count, DataType dtype, double factor);

// Exact integer average: dst[i] = src[i] / divisor, truncated toward zero like C++ and like
// NumPy's trunc(a / b). Floats: multiply by 1/divisor.
void CpuDivide(void* dst, const void* src, size_t count, DataType dtype, int64_t divisor);

// IEEE half and bfloat16 conversions (round to nearest even).
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToBFloat16(float f);

}  // namespace fusecomm
