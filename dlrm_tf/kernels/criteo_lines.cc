// A CPU kernel for the converter: a chunk of clean Criteo lines -> its columns.
//
// DlrmCriteoCleanLines: a chunk (uint8 [n]) of L lines ("\n" between them, none at the end),
//   each `label \t num_dense counts \t num_sparse hex values`, parsed by
//   criteo.py's rules: label "0" or "1"; a count is empty (0) or -?[0-9]{1,D}
//   (negative -> 0); a value is empty (missing, 0) or [0-9a-fA-F]{1,H}, then
//   % max_ind_range when that is > 0. Outputs clean, labels [L], counts
//   [L, num_dense], values [L, num_sparse] and missing [L, num_sparse].
//
// clean is false as soon as any line breaks a rule (a wrong field count, a
// control byte other than the separators, a bad or too long value); the other
// outputs then hold nothing useful and the caller parses the chunk with the
// TensorFlow ops, which explain each bad line.

#include <cstdint>
#include <cstring>

#include "tf_kernel.h"

namespace dlrm_tf {

namespace {

constexpr unsigned char kTab = '\t';
constexpr unsigned char kNewline = '\n';
// Any byte <= this ends a field, so a stray control byte is caught as a bad separator.
constexpr unsigned char kLastControl = '\n';
constexpr int kEndOfChunk = -1;

// 0-15 for a hex digit, -1 for any other byte.
struct HexTable {
  int8_t digit[256];
  HexTable() {
    std::memset(digit, -1, sizeof(digit));
    for (int c = 0; c < 10; ++c) digit['0' + c] = c;
    for (int c = 0; c < 6; ++c) digit['a' + c] = digit['A' + c] = 10 + c;
  }
};
const HexTable kHex;

struct Field {
  const unsigned char* start;
  int64_t length;
  int separator;  // the byte after the field, or kEndOfChunk
};

inline Field NextField(const unsigned char*& at, const unsigned char* end) {
  const unsigned char* start = at;
  while (at < end && *at > kLastControl) ++at;
  Field field{start, at - start, at < end ? *at : kEndOfChunk};
  if (at < end) ++at;
  return field;
}

// An empty count is 0; a negative one is 0 once its digits are checked.
inline bool ParseCount(const Field& f, int max_digits, int64_t* count) {
  const bool negative = f.length > 0 && f.start[0] == '-';
  const int64_t digits = f.length - negative;
  if ((negative && digits == 0) || digits > max_digits) return false;
  int64_t value = 0;
  for (int64_t k = negative; k < f.length; ++k) {
    const unsigned digit = static_cast<unsigned>(f.start[k]) - '0';
    if (digit > 9) return false;
    value = value * 10 + digit;
  }
  *count = negative ? 0 : value;
  return true;
}

inline bool ParseHex(const Field& f, int max_digits, int64_t* value) {
  if (f.length > max_digits) return false;
  int64_t v = 0;
  for (int64_t k = 0; k < f.length; ++k) {
    const int digit = kHex.digit[f.start[k]];
    if (digit < 0) return false;
    v = (v << 4) | digit;
  }
  *value = v;
  return true;
}

class CriteoCleanLinesOp : public OpKernel {
 public:
  explicit CriteoCleanLinesOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("num_dense", &num_dense_));
    OP_REQUIRES_OK(context, context->GetAttr("num_sparse", &num_sparse_));
    OP_REQUIRES_OK(context, context->GetAttr("max_ind_range", &max_ind_range_));
    OP_REQUIRES_OK(context, context->GetAttr("max_count_digits", &max_count_digits_));
    OP_REQUIRES_OK(context, context->GetAttr("max_hex_digits", &max_hex_digits_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& chunk = context->input(0);
    OP_REQUIRES(context, chunk.dims() == 1,
                errors::InvalidArgument("chunk must be a vector of bytes"));
    const auto* begin = chunk.flat<uint8_t>().data();
    const auto* end = begin + chunk.NumElements();
    int64_t lines = 1;
    for (const unsigned char* at = begin; (at = static_cast<const unsigned char*>(
                                               std::memchr(at, kNewline, end - at)));
         ++at) {
      ++lines;
    }
    Tensor* clean = nullptr;
    Tensor *labels = nullptr, *counts = nullptr, *values = nullptr, *missing = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({}), &clean));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({lines}), &labels));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({lines, num_dense_}), &counts));
    OP_REQUIRES_OK(context,
                   context->allocate_output(3, TensorShape({lines, num_sparse_}), &values));
    OP_REQUIRES_OK(context,
                   context->allocate_output(4, TensorShape({lines, num_sparse_}), &missing));
    clean->scalar<bool>()() = Parse(begin, end, lines, labels->flat<int32_t>().data(),
                                    counts->flat<int64_t>().data(),
                                    values->flat<int64_t>().data(), missing->flat<bool>().data());
  }

 private:
  bool Parse(const unsigned char* at, const unsigned char* end, int64_t lines, int32_t* labels,
             int64_t* counts, int64_t* values, bool* missing) const {
    for (int64_t row = 0; row < lines; ++row) {
      const int last_separator = row + 1 < lines ? kNewline : kEndOfChunk;
      const Field label = NextField(at, end);
      if (label.separator != kTab || label.length != 1 ||
          (label.start[0] != '0' && label.start[0] != '1')) {
        return false;
      }
      labels[row] = label.start[0] - '0';
      for (int j = 0; j < num_dense_; ++j) {
        const Field f = NextField(at, end);
        if (f.separator != kTab || !ParseCount(f, max_count_digits_, counts++)) return false;
      }
      for (int j = 0; j < num_sparse_; ++j) {
        const Field f = NextField(at, end);
        const int separator = j + 1 < num_sparse_ ? kTab : last_separator;
        int64_t value = 0;
        if (f.separator != separator || !ParseHex(f, max_hex_digits_, &value)) return false;
        *values++ = max_ind_range_ > 0 ? value % max_ind_range_ : value;
        *missing++ = f.length == 0;
      }
    }
    return true;
  }

  int num_dense_ = 0;
  int num_sparse_ = 0;
  int64_t max_ind_range_ = 0;
  int max_count_digits_ = 0;
  int max_hex_digits_ = 0;
};

absl::Status CleanLinesShape(shape_inference::InferenceContext* c) {
  shape_inference::ShapeHandle chunk;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &chunk));
  int num_dense, num_sparse;
  TF_RETURN_IF_ERROR(c->GetAttr("num_dense", &num_dense));
  TF_RETURN_IF_ERROR(c->GetAttr("num_sparse", &num_sparse));
  const auto lines = c->UnknownDim();
  c->set_output(0, c->Scalar());
  c->set_output(1, c->Vector(lines));
  c->set_output(2, c->Matrix(lines, num_dense));
  c->set_output(3, c->Matrix(lines, num_sparse));
  c->set_output(4, c->Matrix(lines, num_sparse));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("DlrmCriteoCleanLines")
    .Input("chunk: uint8")
    .Output("clean: bool")
    .Output("labels: int32")
    .Output("counts: int64")
    .Output("values: int64")
    .Output("missing: bool")
    .Attr("num_dense: int >= 0")
    .Attr("num_sparse: int >= 1")
    .Attr("max_ind_range: int >= 0")
    .Attr("max_count_digits: int >= 1")
    .Attr("max_hex_digits: int >= 1")
    .SetShapeFn(CleanLinesShape);

REGISTER_KERNEL_BUILDER(Name("DlrmCriteoCleanLines").Device(DEVICE_CPU), CriteoCleanLinesOp);

}  // namespace dlrm_tf
