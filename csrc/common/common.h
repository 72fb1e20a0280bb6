// Framework-neutral vocabulary of the BlueFog core: data types, op kinds, shapes.
// Nothing in csrc/common includes a torch or TensorFlow header.
#ifndef BLUEFOG_COMMON_COMMON_H
#define BLUEFOG_COMMON_COMMON_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bluefog {

// Values are part of the C ABI (frontends pass them as ints): append only.
enum class DataType : int32_t {
  UINT8 = 0,
  INT8 = 1,
  INT16 = 2,
  INT32 = 3,
  INT64 = 4,
  FLOAT16 = 5,
  FLOAT32 = 6,
  FLOAT64 = 7,
  BFLOAT16 = 8,
  BOOL = 9,
};
constexpr int32_t kNumDataTypes = 10;

size_t DataTypeSize(DataType dtype);
const char* DataTypeName(DataType dtype);
bool IsFloatingPoint(DataType dtype);

// Values are part of the C ABI: append only.
enum class OpType : int32_t {
  ALLREDUCE = 0,
  BROADCAST = 1,
  ALLGATHER = 2,
  BARRIER = 3,
  // Control ops travel through the same agreed order as data ops.
  SET_SKIP_NEGOTIATE = 4,
  // Receive each source's tensor (sent scaled by the sender's dst weight):
  // the exchange under neighbor_allreduce, pair_gossip and the hierarchical op.
  NEIGHBOR_ALLREDUCE = 5,
  // Receive each source's tensor, first dimensions may differ; concatenated.
  NEIGHBOR_ALLGATHER = 6,
  // Collective window lifecycle (negotiated). One-sided window ops are not
  // negotiated: they run as direct ops on the background thread.
  WIN_CREATE = 7,
  WIN_FREE = 8,
};

const char* OpTypeName(OpType op);  // "allreduce", ...
std::string OpTypeUpper(OpType op);  // "ALLREDUCE", for timeline activity names

using Shape = std::vector<int64_t>;
std::string ShapeString(const Shape& shape);
int64_t NumElements(const Shape& shape);

constexpr int kCpuDevice = -1;

// "rank [3]" / "ranks [0, 2]".
std::string RankList(const std::vector<int>& ranks);
// "" when every rank gave the same value (values[r] is rank r's), else
// "ranks disagree on <field>: ranks [0, 2] have a; rank [1] has b" (groups in
// the order of their first rank).
std::string DisagreementText(const std::vector<std::string>& values, const std::string& field);

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_COMMON_H
