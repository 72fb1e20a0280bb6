// float16 / bfloat16 helpers: conversions, in-place scaling, elementwise sums.
#ifndef BLUEFOG_COMMON_HALF_H
#define BLUEFOG_COMMON_HALF_H

#include <cstdint>

#include "common.h"

namespace bluefog {

float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToBFloat16(float f);

// Multiplies `count` elements of `dtype` at `data` by `factor` (CPU memory).
// Integers times an integral factor are exact (wrapping like torch's integer
// ops); by another factor, scaled in double precision and truncated.
void ScaleBuffer(DataType dtype, void* data, int64_t count, double factor);

// Whether `w` is an integer that int64 holds: integer windows' weights must
// be (the frontends check), so that they are applied exactly.
bool IntegralWeight(double w);

// acc[i] += add[i] for `count` elements of `dtype` (CPU memory; `add` need not
// be aligned for the type, `acc` must be). Integers wrap
// like MPI_SUM; float16/bfloat16 add in float and round once, like the MPI sum
// ops. Bool is not summable (the coordinator rejects it first).
void SumInto(DataType dtype, void* acc, const void* add, int64_t count);

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_HALF_H
