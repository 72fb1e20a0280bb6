#include "half.h"

#include <cmath>
#include <cstring>
#include <type_traits>

namespace bluefog {

float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400u)) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  }
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absx < 0x38800000u) {  // subnormal or zero in half
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t exp = absx >> 23;
    uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // 14..24
    uint32_t half_mant = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);  // round to nearest even
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_mant & 1))) ++half_mant;
    return static_cast<uint16_t>(sign | half_mant);
  }
  uint32_t exp = (absx >> 23) - 127 + 15;
  uint32_t mant = absx & 0x7fffffu;
  uint32_t half = (exp << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) ++half;  // may carry into exponent: correct
  return static_cast<uint16_t>(sign | half);
}

float BFloat16ToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint16_t FloatToBFloat16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
  uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

namespace {
template <typename T>
void ScaleTyped(void* data, int64_t count, double factor) {
  T* p = static_cast<T*>(data);
  if constexpr (std::is_integral_v<T>) {
    if (IntegralWeight(factor)) {  // exact, wrapping (in unsigned arithmetic: no overflow UB)
      const uint64_t f = static_cast<uint64_t>(static_cast<int64_t>(factor));
      for (int64_t i = 0; i < count; ++i)
        p[i] = static_cast<T>(static_cast<uint64_t>(static_cast<int64_t>(p[i])) * f);
      return;
    }
  }
  for (int64_t i = 0; i < count; ++i) p[i] = static_cast<T>(p[i] * factor);
}

// U: the type the sum is formed in (unsigned for integers, so overflow wraps).
// `add` may be unaligned (an inline payload sits wherever the negotiation
// message put it): each element is read with memcpy, which compiles to a plain
// unaligned load and still vectorizes.
template <typename T>
inline T LoadUnaligned(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T, typename U = T>
void SumTyped(void* acc, const void* add, int64_t count) {
  T* a = static_cast<T*>(acc);
  const char* b = static_cast<const char*>(add);
  for (int64_t i = 0; i < count; ++i) {
    a[i] = static_cast<T>(static_cast<U>(a[i]) + static_cast<U>(LoadUnaligned<T>(b + i * sizeof(T))));
  }
}

template <float (*ToFloat)(uint16_t), uint16_t (*FromFloat)(float)>
void SumHalfTyped(void* acc, const void* add, int64_t count) {
  uint16_t* a = static_cast<uint16_t*>(acc);
  const char* b = static_cast<const char*>(add);
  for (int64_t i = 0; i < count; ++i) {
    a[i] = FromFloat(ToFloat(a[i]) + ToFloat(LoadUnaligned<uint16_t>(b + i * sizeof(uint16_t))));
  }
}
}  // namespace

void SumInto(DataType dtype, void* acc, const void* add, int64_t count) {
  switch (dtype) {
    case DataType::FLOAT32: SumTyped<float>(acc, add, count); return;
    case DataType::FLOAT64: SumTyped<double>(acc, add, count); return;
    case DataType::FLOAT16: SumHalfTyped<HalfToFloat, FloatToHalf>(acc, add, count); return;
    case DataType::BFLOAT16: SumHalfTyped<BFloat16ToFloat, FloatToBFloat16>(acc, add, count); return;
    case DataType::UINT8: SumTyped<uint8_t, uint32_t>(acc, add, count); return;
    case DataType::INT8: SumTyped<int8_t, uint32_t>(acc, add, count); return;
    case DataType::INT16: SumTyped<int16_t, uint32_t>(acc, add, count); return;
    case DataType::INT32: SumTyped<int32_t, uint32_t>(acc, add, count); return;
    case DataType::INT64: SumTyped<int64_t, uint64_t>(acc, add, count); return;
    case DataType::BOOL: return;
  }
}

bool IntegralWeight(double w) { return w == std::trunc(w) && w >= -9.2e18 && w <= 9.2e18; }

void ScaleBuffer(DataType dtype, void* data, int64_t count, double factor) {
  switch (dtype) {
    case DataType::FLOAT32: {
      float* p = static_cast<float*>(data);
      float f = static_cast<float>(factor);
      for (int64_t i = 0; i < count; ++i) p[i] *= f;
      return;
    }
    case DataType::FLOAT64: ScaleTyped<double>(data, count, factor); return;
    case DataType::FLOAT16: {
      uint16_t* p = static_cast<uint16_t*>(data);
      for (int64_t i = 0; i < count; ++i) p[i] = FloatToHalf(static_cast<float>(HalfToFloat(p[i]) * factor));
      return;
    }
    case DataType::BFLOAT16: {
      uint16_t* p = static_cast<uint16_t*>(data);
      for (int64_t i = 0; i < count; ++i)
        p[i] = FloatToBFloat16(static_cast<float>(BFloat16ToFloat(p[i]) * factor));
      return;
    }
    case DataType::UINT8: ScaleTyped<uint8_t>(data, count, factor); return;
    case DataType::INT8: ScaleTyped<int8_t>(data, count, factor); return;
    case DataType::INT16: ScaleTyped<int16_t>(data, count, factor); return;
    case DataType::INT32: ScaleTyped<int32_t>(data, count, factor); return;
    case DataType::INT64: ScaleTyped<int64_t>(data, count, factor); return;
    case DataType::BOOL: return;
  }
}

}  // namespace bluefog
