// Fused CPU kernels for embedding tables held in resource variables.
//
// DlrmBagSum: out[b] = sum of table[ids[i]] over the i with bag_of_id[i] == b,
//   reading each row once from the variable (no [n, d] copy of the gathered rows).
// DlrmScatterSubRows: table[ids[i]] -= scale * source[positions[i]], row updates
//   spread over the CPU threads by id (each row written by one thread, in order).
// DlrmBagSums: DlrmBagSum of N tables of one width at once, from the padded ids
//   [N, B, H] (-1: absent) into [B, N, d]. DlrmPresentIds: each table's present
//   ids in (bag, slot) order and the row b * N + t of the [B * N, d] output
//   gradient each one's gradient row is, for its IndexedSlices.
//
// Both keep TensorFlow's sparse-access contract on the variable (copy-on-read
// mode, as ResourceGather and the ResourceScatter ops do) and reject an id
// outside the table with InvalidArgument.

#define EIGEN_USE_THREADS

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/util/work_sharder.h"
#include "tf_kernel.h"

namespace dlrm_tf {

using tensorflow::Var;
using CPUDevice = Eigen::ThreadPoolDevice;

REGISTER_OP("DlrmBagSum")
    .Input("table: resource")
    .Input("ids: int64")
    .Input("bag_of_id: int64")
    .Input("num_bags: int64")
    .Output("sums: float")
    .Attr("dim: int")
    .SetIsStateful()
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      int64_t dim;
      TF_RETURN_IF_ERROR(c->GetAttr("dim", &dim));
      tensorflow::shape_inference::DimensionHandle bags;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(3, &bags));
      c->set_output(0, c->Matrix(bags, dim));
      return absl::OkStatus();
    });

REGISTER_OP("DlrmScatterSubRows")
    .Input("table: resource")
    .Input("ids: int64")
    .Input("source: float")
    .Input("positions: int64")
    .Input("scale: float")
    .SetIsStateful()
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext*) {
      return absl::OkStatus();
    });

REGISTER_OP("DlrmBagSums")
    .Input("tables: N * resource")
    .Input("ids: int64")
    .Output("sums: float")
    .Attr("N: int >= 1")
    .Attr("dim: int")
    .SetIsStateful()
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      int64_t n, dim;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      TF_RETURN_IF_ERROR(c->GetAttr("dim", &dim));
      tensorflow::shape_inference::ShapeHandle ids;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(n), 3, &ids));
      c->set_output(0, c->MakeShape({c->Dim(ids, 1), n, dim}));
      return absl::OkStatus();
    });

REGISTER_OP("DlrmPresentIds")
    .Input("ids: int64")
    .Output("table_ids: N * int64")
    .Output("positions: N * int64")
    .Attr("N: int >= 1")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      int64_t n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      for (int64_t t = 0; t < 2 * n; ++t) c->set_output(t, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    });

namespace {

// The table's variable (input 0), put in sparse-access mode.
absl::Status LookupTable(OpKernelContext* ctx, tensorflow::core::RefCountPtr<Var>* var,
                         int input = 0) {
  TF_RETURN_IF_ERROR(LookupResource(ctx, tensorflow::HandleFromInput(ctx, input), var));
  return tensorflow::EnsureSparseVariableAccess<CPUDevice, float>(ctx, var->get());
}

// The padded ids of a layer's tables: [tables, batch, bag].
absl::Status CheckPaddedIds(const Tensor& ids, int num_tables) {
  if (ids.dims() == 3 && ids.dim_size(0) == num_tables) return absl::OkStatus();
  return errors::InvalidArgument("ids must be [", num_tables, ", batch, bag], got ",
                                 ids.shape().DebugString());
}

absl::Status CheckTable(const Tensor& table) {
  if (table.dtype() != tensorflow::DT_FLOAT || table.dims() != 2) {
    return errors::InvalidArgument("embedding table must be a float32 matrix, got ",
                                   table.DebugString());
  }
  return absl::OkStatus();
}

// Rows are read in random order: fetching a few ids ahead hides most of the
// memory latency, which dominates once a table is larger than the caches.
constexpr int64_t kAhead = 8;

// The row of ids[i + kAhead] (of ids[n - 1] near the end); an out-of-range id
// is clamped, as only a prefetch reads it.
inline const float* RowAhead(const float* table, const int64_t* ids, int64_t i, int64_t n,
                             int64_t rows, int64_t dim) {
  return table + std::clamp<int64_t>(ids[std::min(i + kAhead, n - 1)], 0, rows - 1) * dim;
}

// A macro, not a function: GCC deletes calls of a function that only prefetches
// (it counts prefetches as free of side effects).
#define DLRM_PREFETCH_ROW(row, dim)                             \
  do {                                                          \
    const float* const dlrm_row = (row);                        \
    const int64_t dlrm_last = (dim) - 1;                        \
    __builtin_prefetch(dlrm_row);                               \
    __builtin_prefetch(dlrm_row + std::min<int64_t>(16, dlrm_last)); \
    __builtin_prefetch(dlrm_row + std::min<int64_t>(32, dlrm_last)); \
    __builtin_prefetch(dlrm_row + std::min<int64_t>(48, dlrm_last)); \
  } while (0)

absl::Status OutOfRange(int64_t id, int64_t i, int64_t rows) {
  return errors::InvalidArgument("id ", id, " at position ", i,
                                 " is outside the table's [0, ", rows, ")");
}

}  // namespace

class BagSumOp : public OpKernel {
 public:
  explicit BagSumOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids_t = ctx->input(1);
    const Tensor& bags_t = ctx->input(2);
    OP_REQUIRES(ctx, ids_t.dims() == 1 && bags_t.shape() == ids_t.shape(),
                errors::InvalidArgument("ids and bag_of_id must be vectors of one length"));
    const int64_t num_bags = ctx->input(3).scalar<int64_t>()();
    const int64_t n = ids_t.dim_size(0);
    const auto ids = ids_t.flat<int64_t>();
    const auto bag_of_id = bags_t.flat<int64_t>();

    // starts[b]..starts[b + 1]: the ids of bag b (bag_of_id is sorted).
    std::vector<int64_t> starts(num_bags + 1, n);
    int64_t previous = -1;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = bag_of_id(i);
      OP_REQUIRES(ctx, b >= previous && b < num_bags,
                  errors::InvalidArgument("bag_of_id must be sorted and below num_bags; ",
                                          "position ", i, " has ", b));
      for (int64_t k = previous + 1; k <= b; ++k) starts[k] = i;
      previous = b;
    }

    tensorflow::core::RefCountPtr<Var> var;
    OP_REQUIRES_OK(ctx, LookupTable(ctx, &var));
    tsl::tf_shared_lock lock(*var->mu());
    const Tensor& table_t = *var->tensor();
    OP_REQUIRES_OK(ctx, CheckTable(table_t));
    const int64_t rows = table_t.dim_size(0);
    const int64_t dim = table_t.dim_size(1);
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_bags, dim}), &out_t));
    const float* table = table_t.flat<float>().data();
    float* out = out_t->flat<float>().data();

    std::atomic<int64_t> bad{-1};
    auto sum_bags = [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        float* acc = out + b * dim;
        std::fill(acc, acc + dim, 0.0f);
        for (int64_t i = starts[b]; i < starts[b + 1]; ++i) {
          const int64_t id = ids(i);
          if (id < 0 || id >= rows) {
            bad.store(i);
            continue;
          }
          DLRM_PREFETCH_ROW(RowAhead(table, ids.data(), i, n, rows, dim), dim);
          const float* row = table + id * dim;
          for (int64_t j = 0; j < dim; ++j) acc[j] += row[j];
        }
      }
    };
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = (n / std::max<int64_t>(num_bags, 1) + 1) * dim * 4;
    tensorflow::Shard(workers->num_threads, workers->workers, num_bags, cost, sum_bags);
    const int64_t i = bad.load();
    OP_REQUIRES(ctx, i < 0, OutOfRange(i < 0 ? 0 : ids(i), i, rows));
  }
};

class ScatterSubRowsOp : public OpKernel {
 public:
  explicit ScatterSubRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids_t = ctx->input(1);
    const Tensor& source_t = ctx->input(2);
    const Tensor& positions_t = ctx->input(3);
    OP_REQUIRES(ctx, ids_t.dims() == 1 && positions_t.shape() == ids_t.shape(),
                errors::InvalidArgument("ids and positions must be vectors of one length"));
    OP_REQUIRES(ctx, source_t.dims() == 2,
                errors::InvalidArgument("source must be a matrix, got ",
                                        source_t.shape().DebugString()));
    const float scale = ctx->input(4).scalar<float>()();
    const int64_t n = ids_t.dim_size(0);
    const int64_t sources = source_t.dim_size(0);
    const auto ids = ids_t.flat<int64_t>();
    const auto positions = positions_t.flat<int64_t>();

    tensorflow::core::RefCountPtr<Var> var;
    OP_REQUIRES_OK(ctx, LookupTable(ctx, &var));
    tsl::mutex_lock lock(*var->mu());
    Tensor* table_t = var->tensor();
    OP_REQUIRES_OK(ctx, CheckTable(*table_t));
    const int64_t rows = table_t->dim_size(0);
    const int64_t dim = table_t->dim_size(1);
    OP_REQUIRES(ctx, source_t.dim_size(1) == dim,
                errors::InvalidArgument("source rows have ", source_t.dim_size(1),
                                        " values, the table's ", dim));
    // Every id and position is checked before any row changes.
    for (int64_t i = 0; i < n; ++i) {
      OP_REQUIRES(ctx, ids(i) >= 0 && ids(i) < rows, OutOfRange(ids(i), i, rows));
      OP_REQUIRES(ctx, positions(i) >= 0 && positions(i) < sources,
                  errors::InvalidArgument("position ", positions(i), " at ", i,
                                          " is outside the source's ", sources, " rows"));
    }
    float* table = table_t->flat<float>().data();
    const float* source = source_t.flat<float>().data();

    // Part p updates the rows with id % parts == p, each in the ids' order: the
    // same result as one thread, without two threads writing one row.
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t parts = std::max(1, workers->num_threads);
    auto update = [&](int64_t first, int64_t last) {
      // This shard's ids and their source rows, in order: the prefetches then
      // fetch only rows this thread writes.
      std::vector<int64_t> mine, from;
      mine.reserve(n / parts + 1);
      from.reserve(n / parts + 1);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t part = ids(i) % parts;
        if (part < first || part >= last) continue;
        mine.push_back(ids(i));
        from.push_back(positions(i));
      }
      const int64_t m = static_cast<int64_t>(mine.size());
      for (int64_t k = 0; k < m; ++k) {
        DLRM_PREFETCH_ROW(RowAhead(table, mine.data(), k, m, rows, dim), dim);
        float* row = table + mine[k] * dim;
        const float* delta = source + from[k] * dim;
        for (int64_t j = 0; j < dim; ++j) row[j] -= scale * delta[j];
      }
    };
    tensorflow::Shard(parts, workers->workers, parts, std::max<int64_t>(n * dim, 1), update);
  }
};

class BagSumsOp : public OpKernel {
 public:
  explicit BagSumsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_tables_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids_t = ctx->input(num_tables_);
    OP_REQUIRES_OK(ctx, CheckPaddedIds(ids_t, num_tables_));
    const int64_t batch = ids_t.dim_size(1);
    const int64_t slots = ids_t.dim_size(2);
    const int64_t per_table = batch * slots;
    const int64_t dim = dim_;

    std::vector<tensorflow::core::RefCountPtr<Var>> vars(num_tables_);
    std::vector<std::unique_ptr<tsl::tf_shared_lock>> locks;
    std::vector<const float*> tables(num_tables_);
    std::vector<int64_t> rows(num_tables_);
    for (int t = 0; t < num_tables_; ++t) {
      OP_REQUIRES_OK(ctx, LookupTable(ctx, &vars[t], t));
      locks.push_back(std::make_unique<tsl::tf_shared_lock>(*vars[t]->mu()));
      const Tensor& table_t = *vars[t]->tensor();
      OP_REQUIRES_OK(ctx, CheckTable(table_t));
      OP_REQUIRES(ctx, table_t.dim_size(1) == dim,
                  errors::InvalidArgument("table ", t, " has rows of ", table_t.dim_size(1),
                                          " values, not ", dim));
      tables[t] = table_t.flat<float>().data();
      rows[t] = table_t.dim_size(0);
    }
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, num_tables_, dim}), &out_t));
    float* out = out_t->flat<float>().data();
    const int64_t* ids = ids_t.flat<int64_t>().data();

    // Each shard sums a range of bags, table by table: the prefetches run ahead
    // within one table's ids.
    std::atomic<int64_t> bad{-1};
    auto sum_bags = [&](int64_t first, int64_t last) {
      for (int t = 0; t < num_tables_; ++t) {
        const int64_t* table_ids = ids + t * per_table;
        const float* table = tables[t];
        const int64_t end = last * slots;
        for (int64_t b = first; b < last; ++b) {
          float* acc = out + (b * num_tables_ + t) * dim;
          std::fill(acc, acc + dim, 0.0f);
          for (int64_t i = b * slots; i < (b + 1) * slots; ++i) {
            const int64_t id = table_ids[i];
            if (id == -1) continue;
            if (id < 0 || id >= rows[t]) {
              bad.store(t * per_table + i);
              continue;
            }
            DLRM_PREFETCH_ROW(RowAhead(table, table_ids, i, end, rows[t], dim), dim);
            const float* row = table + id * dim;
            for (int64_t j = 0; j < dim; ++j) acc[j] += row[j];
          }
        }
      }
    };
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = (slots + 1) * num_tables_ * dim * 4;
    tensorflow::Shard(workers->num_threads, workers->workers, batch, cost, sum_bags);
    const int64_t at = bad.load();
    if (at >= 0) {
      const int64_t t = at / per_table;
      OP_REQUIRES(ctx, false,
                  errors::InvalidArgument("id ", ids[at], " of feature ", t, " at example ",
                                          (at % per_table) / slots, " is outside the table's [0, ",
                                          rows[t], ")"));
    }
  }

 private:
  int num_tables_ = 0;
  int64_t dim_ = 0;
};

class PresentIdsOp : public OpKernel {
 public:
  explicit PresentIdsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_tables_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids_t = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckPaddedIds(ids_t, num_tables_));
    const int64_t slots = ids_t.dim_size(2);
    const int64_t per_table = ids_t.dim_size(1) * slots;
    const int64_t* ids = ids_t.flat<int64_t>().data();
    for (int t = 0; t < num_tables_; ++t) {
      const int64_t* table_ids = ids + t * per_table;
      const int64_t present =
          per_table - std::count(table_ids, table_ids + per_table, int64_t{-1});
      Tensor* kept_t = nullptr;
      Tensor* positions_t = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(t, TensorShape({present}), &kept_t));
      OP_REQUIRES_OK(ctx,
                     ctx->allocate_output(num_tables_ + t, TensorShape({present}), &positions_t));
      int64_t* kept = kept_t->flat<int64_t>().data();
      int64_t* positions = positions_t->flat<int64_t>().data();
      for (int64_t i = 0; i < per_table; ++i) {
        if (table_ids[i] == -1) continue;
        *kept++ = table_ids[i];
        *positions++ = (i / slots) * num_tables_ + t;
      }
    }
  }

 private:
  int num_tables_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("DlrmBagSum").Device(DEVICE_CPU).HostMemory("num_bags"),
                        BagSumOp);
REGISTER_KERNEL_BUILDER(Name("DlrmScatterSubRows").Device(DEVICE_CPU), ScatterSubRowsOp);
REGISTER_KERNEL_BUILDER(Name("DlrmBagSums").Device(DEVICE_CPU), BagSumsOp);
REGISTER_KERNEL_BUILDER(Name("DlrmPresentIds").Device(DEVICE_CPU), PresentIdsOp);

}  // namespace dlrm_tf
