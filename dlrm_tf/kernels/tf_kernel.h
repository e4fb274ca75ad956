// The TensorFlow framework headers and names every kernel of dlrm_tf uses.
#ifndef DLRM_TF_KERNELS_TF_KERNEL_H_
#define DLRM_TF_KERNELS_TF_KERNEL_H_

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace dlrm_tf {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;
namespace shape_inference = tensorflow::shape_inference;

}  // namespace dlrm_tf

#endif  // DLRM_TF_KERNELS_TF_KERNEL_H_
