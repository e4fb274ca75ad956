// Fused CPU kernels for DLRM's dot interaction.
//
// DlrmDotInteraction: for each example b, the features f_0 = x[b] and
//   f_k = embeddings[b, k - 1] (k = 1..T); out[b] = concat(x[b], <f_i, f_j> for
//   i = 0..T, j < i, or j <= i with self_interaction), the pairs in that order.
// DlrmDotInteractionGrad: the gradients of x and embeddings from out's gradient.
//
// One pass per example over its F = T + 1 features, which stay in the L1 cache:
// no [B, F, F] Gram matrix, no gather of its lower triangle, no stacked copy.

#define EIGEN_USE_THREADS

#include <algorithm>
#include <vector>

#include "tensorflow/core/util/work_sharder.h"
#include "tf_kernel.h"

namespace dlrm_tf {

namespace {

int64_t NumPairs(int64_t features, bool self_interaction) {
  return features * (features - 1) / 2 + (self_interaction ? features : 0);
}

absl::Status InteractionShape(shape_inference::InferenceContext* c) {
  bool self_interaction;
  TF_RETURN_IF_ERROR(c->GetAttr("self_interaction", &self_interaction));
  shape_inference::ShapeHandle x, embeddings;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &embeddings));
  const auto tables = c->Dim(embeddings, 1);
  const auto dim = c->Dim(x, 1);
  if (!c->ValueKnown(tables) || !c->ValueKnown(dim)) {
    c->set_output(0, c->Matrix(c->Dim(x, 0), c->UnknownDim()));
    return absl::OkStatus();
  }
  const int64_t width = c->Value(dim) + NumPairs(c->Value(tables) + 1, self_interaction);
  c->set_output(0, c->Matrix(c->Dim(x, 0), width));
  return absl::OkStatus();
}

inline void AddScaled(float* into, float scale, const float* row, int64_t n) {
  for (int64_t j = 0; j < n; ++j) into[j] += scale * row[j];
}

// The inputs' shapes, checked: x [B, d], embeddings [B, T, d].
struct Shapes {
  int64_t batch, tables, dim, pairs;
};

absl::Status CheckInputs(const Tensor& x, const Tensor& embeddings, bool self_interaction,
                         Shapes* shapes) {
  if (x.dims() != 2 || embeddings.dims() != 3 || embeddings.dim_size(0) != x.dim_size(0) ||
      embeddings.dim_size(2) != x.dim_size(1)) {
    return errors::InvalidArgument("x must be [batch, d] and embeddings [batch, tables, d]; got ",
                                   x.shape().DebugString(), " and ",
                                   embeddings.shape().DebugString());
  }
  shapes->batch = x.dim_size(0);
  shapes->tables = embeddings.dim_size(1);
  shapes->dim = x.dim_size(1);
  shapes->pairs = NumPairs(shapes->tables + 1, self_interaction);
  return absl::OkStatus();
}

// Built for the widest vectors the CPU has (picked when the library loads): the
// library itself is compiled for the baseline ISA, as its cache may be shared.
#define DLRM_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// Examples [first, last) of DlrmDotInteraction. Each example's features are
// first transposed to [d, F]: feature i's products with features 0..n then add up
// as d contiguous multiply-adds of length n, straight into the output row.
DLRM_VECTOR_CLONES void Interact(const float* x, const float* emb, const Shapes& s,
                                 bool self_interaction, int64_t first, int64_t last, float* out) {
  const int64_t own = self_interaction ? 1 : 0;
  const int64_t width = s.dim + s.pairs;
  const int64_t features = s.tables + 1;
  std::vector<float> transposed(s.dim * features);
  float* ft = transposed.data();
  for (int64_t b = first; b < last; ++b) {
    const float* xb = x + b * s.dim;
    const float* eb = emb + b * s.tables * s.dim;
    for (int64_t c = 0; c < s.dim; ++c) ft[c * features] = xb[c];
    for (int64_t k = 1; k < features; ++k) {
      const float* f = eb + (k - 1) * s.dim;
      for (int64_t c = 0; c < s.dim; ++c) ft[c * features + k] = f[c];
    }
    float* row = out + b * width;
    std::copy(xb, xb + s.dim, row);
    float* pair = row + s.dim;
    for (int64_t i = 0; i < features; ++i) {
      const int64_t n = i + own;
      std::fill(pair, pair + n, 0.0f);
      for (int64_t c = 0; c < s.dim; ++c) {
        const float a = ft[c * features + i];
        const float* column = ft + c * features;
        for (int64_t j = 0; j < n; ++j) pair[j] += a * column[j];
      }
      pair += n;
    }
  }
}

// Examples [first, last) of DlrmDotInteractionGrad.
DLRM_VECTOR_CLONES void InteractBackward(const float* x, const float* emb, const float* grad,
                                         const Shapes& s, bool self_interaction, int64_t first,
                                         int64_t last, float* x_grad, float* emb_grad) {
  const int64_t own = self_interaction ? 1 : 0;
  const int64_t width = s.dim + s.pairs;
  for (int64_t b = first; b < last; ++b) {
    const float* xb = x + b * s.dim;
    const float* eb = emb + b * s.tables * s.dim;
    float* xgb = x_grad + b * s.dim;
    float* egb = emb_grad + b * s.tables * s.dim;
    auto feature = [&](int64_t k) { return k == 0 ? xb : eb + (k - 1) * s.dim; };
    auto feature_grad = [&](int64_t k) { return k == 0 ? xgb : egb + (k - 1) * s.dim; };
    const float* g = grad + b * width;
    std::copy(g, g + s.dim, xgb);
    std::fill(egb, egb + s.tables * s.dim, 0.0f);
    const float* pair = g + s.dim;
    for (int64_t i = 0; i <= s.tables; ++i) {
      for (int64_t j = 0; j < i + own; ++j) {
        const float gij = *pair++;
        AddScaled(feature_grad(i), gij, feature(j), s.dim);
        AddScaled(feature_grad(j), gij, feature(i), s.dim);
      }
    }
  }
}

}  // namespace

REGISTER_OP("DlrmDotInteraction")
    .Input("x: float")
    .Input("embeddings: float")
    .Output("out: float")
    .Attr("self_interaction: bool = false")
    .SetShapeFn(InteractionShape);

REGISTER_OP("DlrmDotInteractionGrad")
    .Input("x: float")
    .Input("embeddings: float")
    .Input("grad: float")
    .Output("x_grad: float")
    .Output("embeddings_grad: float")
    .Attr("self_interaction: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      return absl::OkStatus();
    });

class DotInteractionOp : public OpKernel {
 public:
  explicit DotInteractionOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("self_interaction", &self_interaction_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_t = ctx->input(0);
    const Tensor& emb_t = ctx->input(1);
    Shapes s;
    OP_REQUIRES_OK(ctx, CheckInputs(x_t, emb_t, self_interaction_, &s));
    const int64_t width = s.dim + s.pairs;
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({s.batch, width}), &out_t));
    const float* x = x_t.flat<float>().data();
    const float* emb = emb_t.flat<float>().data();
    float* out = out_t->flat<float>().data();

    auto interact = [&](int64_t first, int64_t last) {
      Interact(x, emb, s, self_interaction_, first, last, out);
    };
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(workers->num_threads, workers->workers, s.batch, s.pairs * s.dim * 2,
                      interact);
  }

 private:
  bool self_interaction_ = false;
};

class DotInteractionGradOp : public OpKernel {
 public:
  explicit DotInteractionGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("self_interaction", &self_interaction_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_t = ctx->input(0);
    const Tensor& emb_t = ctx->input(1);
    const Tensor& grad_t = ctx->input(2);
    Shapes s;
    OP_REQUIRES_OK(ctx, CheckInputs(x_t, emb_t, self_interaction_, &s));
    const int64_t width = s.dim + s.pairs;
    OP_REQUIRES(ctx,
                grad_t.dims() == 2 && grad_t.dim_size(0) == s.batch &&
                    grad_t.dim_size(1) == width,
                errors::InvalidArgument("grad must be [", s.batch, ", ", width, "], got ",
                                        grad_t.shape().DebugString()));
    Tensor* x_grad_t = nullptr;
    Tensor* emb_grad_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x_t.shape(), &x_grad_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, emb_t.shape(), &emb_grad_t));
    const float* x = x_t.flat<float>().data();
    const float* emb = emb_t.flat<float>().data();
    const float* grad = grad_t.flat<float>().data();
    float* x_grad = x_grad_t->flat<float>().data();
    float* emb_grad = emb_grad_t->flat<float>().data();

    auto backward = [&](int64_t first, int64_t last) {
      InteractBackward(x, emb, grad, s, self_interaction_, first, last, x_grad, emb_grad);
    };
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(workers->num_threads, workers->workers, s.batch, s.pairs * s.dim * 4,
                      backward);
  }

 private:
  bool self_interaction_ = false;
};

REGISTER_KERNEL_BUILDER(Name("DlrmDotInteraction").Device(DEVICE_CPU), DotInteractionOp);
REGISTER_KERNEL_BUILDER(Name("DlrmDotInteractionGrad").Device(DEVICE_CPU), DotInteractionGradOp);

}  // namespace dlrm_tf
