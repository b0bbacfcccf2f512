#include "engine/wire.h"

#include <cstring>

#include "common/errors.h"

namespace fusecomm {

namespace {

class Writer {
 public:
  template <typename T>
  void Put(const T& value) {
    const char* p = reinterpret_cast<const char*>(&value);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  void PutString(const std::string& s) {
    Put<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  void PutSpec(const TensorSpec& spec) {
    PutString(spec.name);
    Put<int32_t>(static_cast<int32_t>(spec.op_type));
    Put<int32_t>(static_cast<int32_t>(spec.dtype));
    Put<int32_t>(static_cast<int32_t>(spec.reduce_op));
    Put<uint64_t>(spec.shape.size());
    for (int64_t d : spec.shape) Put<int64_t>(d);
    Put<int32_t>(spec.root);
    Put<double>(spec.prescale);
    Put<double>(spec.postscale);
    Put<int32_t>(spec.device);
    Put<int32_t>(static_cast<int32_t>(spec.algorithm));
    PutString(spec.argument_error);
  }
  std::vector<char> bytes;
};

class Reader {
 public:
  Reader(const char* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  T Get() {
    Need(sizeof(T));
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  std::string GetString() {
    uint64_t n = Get<uint64_t>();
    Need(n);
    std::string s(data_ + pos_, n);
    pos_ += n;
    return s;
  }
  TensorSpec GetSpec() {
    TensorSpec spec;
    spec.name = GetString();
    spec.op_type = static_cast<OpType>(Get<int32_t>());
    spec.dtype = static_cast<DataType>(Get<int32_t>());
    spec.reduce_op = static_cast<ReduceOp>(Get<int32_t>());
    uint64_t dims = Get<uint64_t>();
    for (uint64_t i = 0; i < dims; ++i) spec.shape.push_back(Get<int64_t>());
    spec.root = Get<int32_t>();
    spec.prescale = Get<double>();
    spec.postscale = Get<double>();
    spec.device = Get<int32_t>();
    spec.algorithm = static_cast<AllreduceAlgorithm>(Get<int32_t>());
    spec.argument_error = GetString();
    return spec;
  }
  bool AtEnd() const { return pos_ == size_; }

 private:
  void Need(size_t n) const {
    if (pos_ + n > size_) throw CollectiveError("corrupt control message from a peer rank");
  }
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<char> EncodeSpecs(const std::vector<TensorSpec>& specs) {
  Writer w;
  w.Put<uint64_t>(specs.size());
  for (const auto& s : specs) w.PutSpec(s);
  return std::move(w.bytes);
}

std::vector<TensorSpec> DecodeSpecs(const char* data, size_t size) {
  std::vector<TensorSpec> specs;
  if (size == 0) return specs;
  Reader r(data, size);
  uint64_t n = r.Get<uint64_t>();
  for (uint64_t i = 0; i < n; ++i) specs.push_back(r.GetSpec());
  return specs;
}

std::vector<char> EncodeResponses(const std::vector<Response>& responses) {
  Writer w;
  w.Put<uint64_t>(responses.size());
  for (const auto& resp : responses) {
    w.PutSpec(resp.spec);
    w.PutString(resp.error);
  }
  return std::move(w.bytes);
}

std::vector<Response> DecodeResponses(const char* data, size_t size) {
  std::vector<Response> responses;
  if (size == 0) return responses;
  Reader r(data, size);
  uint64_t n = r.Get<uint64_t>();
  for (uint64_t i = 0; i < n; ++i) {
    Response resp;
    resp.spec = r.GetSpec();
    resp.error = r.GetString();
    responses.push_back(std::move(resp));
  }
  return responses;
}

}  // namespace fusecomm
