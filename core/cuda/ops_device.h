// core/cuda/ops_device.h — the op set on Device::cuda tensors: the same semantics, shapes and
// tape records as core/ops.cpp's CPU ops (the reference), computed by the kernels of
// core/cuda/ops.h on the default stream. core/ops.cpp dispatches here when an op's first
// input lives on the device; the shape checks are done there, before the dispatch.
//
// Host round trips, on purpose: cross_entropy returns its summed loss as a host fp32 [1]
// tensor (the per-row losses are read back and summed in double in index order, exactly as
// the CPU op; the trainer reads the loss every step anyway), and its backward uploads the
// per-row loss gradient (N floats). Token ids and targets are not range-checked on the device
// (that would read them back every step): the data loader validates them.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ptrain::ops::device {

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b);
Tensor add(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double s);
Tensor silu(const Tensor& x);
Tensor gelu(const Tensor& x);
Tensor swiglu(const Tensor& gate, const Tensor& up);
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin);
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps);
/// Causal GQA attention (core/cuda/attention.h); probs [B, Hq, T, T] saved in the input dtype.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v);
Tensor embedding(const Tensor& ids, const Tensor& table);
Tensor rms_norm(const Tensor& x, const Tensor& w, double eps);
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t V, double weight);
/// Last-dim split into pieces of `sizes` columns (core/cuda/split.cu): one copy launch per
/// piece; the backward adds each defined piece gradient into its column block of dx.
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes);
/// dst += src on the device (same dtype and numel), rounded once to dst's dtype.
void accumulate(Tensor& dst, const Tensor& src);

}  // namespace ptrain::ops::device
