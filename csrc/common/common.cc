#include "common.h"

#include <algorithm>
#include <cctype>
#include <sstream>
#include <utility>

namespace bluefog {

size_t DataTypeSize(DataType dtype) {
  switch (dtype) {
    case DataType::UINT8:
    case DataType::INT8:
    case DataType::BOOL:
      return 1;
    case DataType::INT16:
    case DataType::FLOAT16:
    case DataType::BFLOAT16:
      return 2;
    case DataType::INT32:
    case DataType::FLOAT32:
      return 4;
    case DataType::INT64:
    case DataType::FLOAT64:
      return 8;
  }
  return 0;
}

const char* DataTypeName(DataType dtype) {
  switch (dtype) {
    case DataType::UINT8: return "uint8";
    case DataType::INT8: return "int8";
    case DataType::INT16: return "int16";
    case DataType::INT32: return "int32";
    case DataType::INT64: return "int64";
    case DataType::FLOAT16: return "float16";
    case DataType::FLOAT32: return "float32";
    case DataType::FLOAT64: return "float64";
    case DataType::BFLOAT16: return "bfloat16";
    case DataType::BOOL: return "bool";
  }
  return "unknown";
}

bool IsFloatingPoint(DataType dtype) {
  return dtype == DataType::FLOAT16 || dtype == DataType::FLOAT32 ||
         dtype == DataType::FLOAT64 || dtype == DataType::BFLOAT16;
}

const char* OpTypeName(OpType op) {
  switch (op) {
    case OpType::ALLREDUCE: return "allreduce";
    case OpType::BROADCAST: return "broadcast";
    case OpType::ALLGATHER: return "allgather";
    case OpType::BARRIER: return "barrier";
    case OpType::SET_SKIP_NEGOTIATE: return "set_skip_negotiate_stage";
    case OpType::NEIGHBOR_ALLREDUCE: return "neighbor_allreduce";
    case OpType::NEIGHBOR_ALLGATHER: return "neighbor_allgather";
    case OpType::WIN_CREATE: return "win_create";
    case OpType::WIN_FREE: return "win_free";
  }
  return "unknown";
}

std::string OpTypeUpper(OpType op) {
  std::string s = OpTypeName(op);
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

std::string ShapeString(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) os << ", ";
    os << shape[i];
  }
  os << "]";
  return os.str();
}

std::string RankList(const std::vector<int>& ranks) {
  std::ostringstream os;
  os << (ranks.size() == 1 ? "rank " : "ranks ") << "[";
  for (size_t i = 0; i < ranks.size(); ++i) os << (i ? ", " : "") << ranks[i];
  os << "]";
  return os.str();
}

std::string DisagreementText(const std::vector<std::string>& values, const std::string& field) {
  std::vector<std::pair<std::string, std::vector<int>>> groups;  // in order of first rank
  for (int r = 0; r < static_cast<int>(values.size()); ++r) {
    auto it = groups.begin();
    for (; it != groups.end(); ++it)
      if (it->first == values[r]) break;
    if (it == groups.end()) groups.push_back({values[r], {r}});
    else it->second.push_back(r);
  }
  if (groups.size() <= 1) return "";
  std::ostringstream os;
  os << "ranks disagree on " << field << ": ";
  for (size_t i = 0; i < groups.size(); ++i) {
    os << (i ? "; " : "") << RankList(groups[i].second) << (groups[i].second.size() == 1 ? " has " : " have ")
       << groups[i].first;
  }
  return os.str();
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

}  // namespace bluefog
