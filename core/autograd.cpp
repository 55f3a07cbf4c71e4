// core/autograd.cpp — the tape.
#include "core/autograd.h"

#include <atomic>
#include <unordered_map>

#include "core/cpu/kernels.h"
#include "core/ops.h"

namespace ptrain {

namespace {
thread_local Tape* g_current_tape = nullptr;
std::atomic<uint64_t> g_next_tape_id{1};

/// dst += src (same numel), then rounded to dst's dtype grid.
void add_into(Tensor& dst, const Tensor& src) {
  PT_CHECK(dst.numel() == src.numel(), "gradient of {} elements added into {}", src.numel(), dst.numel());
  if (dst.device() == Device::cuda || src.device() == Device::cuda) {
    PT_CHECK(dst.device() == src.device(), "gradient on {} added into a gradient on {}", device_name(src.device()),
             device_name(dst.device()));
    PT_CHECK(dst.dtype() == src.dtype(), "gradient of dtype {} added into {} on the device", dtype_name(src.dtype()),
             dtype_name(dst.dtype()));
    ops::device_accumulate(dst, src);
    return;
  }
  if (dst.dtype() == DType::f64) {
    cpu::axpy<double>(1.0, src.data<double>(), dst.data<double>(), dst.numel());
  } else {
    cpu::axpy<float>(1.0f, src.data<float>(), dst.data<float>(), dst.numel());
    dst.round_();
  }
}
}  // namespace

SavedTensor::SavedTensor(const Tensor& t, SavedTensorHooks* hooks) : hooks_(hooks) {
  if (hooks_ && t.defined())
    packed_ = hooks_->pack(t);
  else
    tensor_ = t;
}

Tensor SavedTensor::get() const { return packed_ ? hooks_->unpack(packed_) : tensor_; }

// ------------------------------------------------------------------ BackwardCtx

bool BackwardCtx::needs_grad(size_t i) const {
  const TapeEntry& e = tape_->entries_[entry_];
  return e.leaf_inputs[i].defined() || e.input_slots[i] >= 0;
}

Tensor BackwardCtx::grad_in(size_t i) {
  TapeEntry& e = tape_->entries_[entry_];
  if (e.leaf_inputs[i].defined()) return e.leaf_inputs[i].grad_buffer(tape_->param_grad_dtype_);
  const int64_t slot = e.input_slots[i];
  if (slot < 0) return Tensor();
  Tensor& g = tape_->slot_grads_[static_cast<size_t>(slot)];
  if (!g.defined()) g = Tensor::zeros(e.input_shapes[i], e.input_dtypes[i], e.input_devices[i]);
  return g;
}

void BackwardCtx::accumulate(size_t i, Tensor g) {
  TapeEntry& e = tape_->entries_[entry_];
  if (e.leaf_inputs[i].defined()) {
    Tensor dst = e.leaf_inputs[i].grad_buffer(tape_->param_grad_dtype_);
    add_into(dst, g);
    return;
  }
  const int64_t slot = e.input_slots[i];
  if (slot < 0) return;
  Tensor& dst = tape_->slot_grads_[static_cast<size_t>(slot)];
  if (!dst.defined()) {
    PT_CHECK(g.numel() == shape_numel(e.input_shapes[i]), "gradient of {} elements for input of shape {}", g.numel(),
             shape_str(e.input_shapes[i]));
    dst = g.view(e.input_shapes[i]);
  } else {
    add_into(dst, g);
  }
}

bool BackwardCtx::splitting() const { return tape_->split_; }

Tensor BackwardCtx::take_grad_out(size_t i) {
  const TapeEntry& e = tape_->entries_[entry_];
  const auto slot = static_cast<size_t>(e.output_slots[i]);
  const Tensor& g = grad_out_[i];
  if (!g.defined()) return g;
  // The slot's buffer is freed after this entry unless it is watched: then it can be handed on.
  if (tape_->slot_keep_[slot]) return g.clone();
  return g;
}

void BackwardCtx::weight_grad(std::function<void()> fn) {
  if (tape_->split_)
    tape_->deferred_.push_back({std::move(fn), nullptr});  // Tape::backward attaches the entry's leaves
  else
    fn();
}

// ------------------------------------------------------------------ Tape

Tape::Tape(DType param_grad_dtype) : id_(g_next_tape_id.fetch_add(1)), param_grad_dtype_(param_grad_dtype) {}

Tape::~Tape() {
  if (g_current_tape == this) g_current_tape = nullptr;
}

Tape* Tape::current() { return g_current_tape; }

bool Tape::owns(const Tensor& t) const { return t.defined() && t.id()->tape_id == id_ && t.id()->slot >= 0; }

bool Tape::should_record(std::initializer_list<const Tensor*> inputs) {
  Tape* tape = g_current_tape;
  if (!tape) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && (t->requires_grad() || tape->owns(*t))) return true;
  return false;
}

int64_t Tape::new_slot() {
  slot_grads_.emplace_back();
  slot_keep_.push_back(false);
  return static_cast<int64_t>(slot_grads_.size()) - 1;
}

void Tape::record(OpId op, const std::vector<const Tensor*>& inputs, const std::vector<Tensor*>& outputs,
                  std::function<void(BackwardCtx&)> backward) {
  TapeEntry e;
  e.op = op;
  e.leaf_inputs.resize(inputs.size());
  e.input_slots.assign(inputs.size(), -1);
  e.input_shapes.resize(inputs.size());
  e.input_dtypes.resize(inputs.size(), DType::f32);
  e.input_devices.resize(inputs.size(), Device::cpu);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor* t = inputs[i];
    if (!t || !t->defined()) continue;
    if (owns(*t)) {
      e.input_slots[i] = t->id()->slot;
      e.input_shapes[i] = t->shape();
      e.input_dtypes[i] = t->dtype();
      e.input_devices[i] = t->device();
    } else if (t->requires_grad())
      e.leaf_inputs[i] = *t;
  }
  for (Tensor* out : outputs) {
    const int64_t slot = new_slot();
    auto* impl = const_cast<TensorImpl*>(out->id());
    impl->tape_id = id_;
    impl->slot = slot;
    e.output_slots.push_back(slot);
  }
  e.backward = std::move(backward);
  entries_.push_back(std::move(e));
}

void Tape::watch(Tensor& t) {
  PT_CHECK(t.defined(), "watch() of an undefined tensor");
  auto* impl = const_cast<TensorImpl*>(t.id());
  PT_CHECK(impl->tape_id == 0 || impl->tape_id == id_, "watch(): tensor already belongs to another tape");
  if (impl->tape_id == id_) {
    slot_keep_[static_cast<size_t>(impl->slot)] = true;
    return;
  }
  impl->tape_id = id_;
  impl->slot = new_slot();
  slot_keep_[static_cast<size_t>(impl->slot)] = true;
}

Tensor Tape::grad_of(const Tensor& t) const {
  if (!owns(t)) return Tensor();
  return slot_grads_[static_cast<size_t>(t.id()->slot)];
}

void Tape::backward(const Tensor& root, Tensor seed, bool split_weight_grads) {
  if (!seed.defined()) {
    seed = Tensor::empty(root.shape(), root.dtype() == DType::f64 ? DType::f64 : DType::f32, root.device());
    seed.fill(1.0);
  }
  backward(std::vector<Tensor>{root}, std::vector<Tensor>{seed}, split_weight_grads);
}

void Tape::backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& seeds, bool split_weight_grads) {
  PT_CHECK(roots.size() == seeds.size(), "backward: {} roots and {} seeds", roots.size(), seeds.size());
  split_ = split_weight_grads;
  for (size_t r = 0; r < roots.size(); ++r) {
    PT_CHECK(owns(roots[r]), "backward: root {} was not produced on this tape", r);
    check_same_shape(roots[r], seeds[r], "backward seed");
    Tensor& g = slot_grads_[static_cast<size_t>(roots[r].id()->slot)];
    if (!g.defined())
      g = seeds[r].clone();
    else
      add_into(g, seeds[r]);
  }
  prepare_leaf_hook();
  BackwardCtx ctx;
  ctx.tape_ = this;
  for (size_t k = entries_.size(); k-- > 0;) {
    TapeEntry& e = entries_[k];
    bool any = false;
    ctx.grad_out_.clear();
    for (int64_t s : e.output_slots) {
      ctx.grad_out_.push_back(slot_grads_[static_cast<size_t>(s)]);
      any = any || ctx.grad_out_.back().defined();
    }
    const size_t queued_before = deferred_.size();
    if (any) {
      ctx.entry_ = k;
      e.backward(ctx);
    }
    // The outputs' gradients are consumed: free them (unless watched).
    for (int64_t s : e.output_slots)
      if (!slot_keep_[static_cast<size_t>(s)]) slot_grads_[static_cast<size_t>(s)] = Tensor();
    e.backward = nullptr;  // releases saved tensors
    if (k < entry_leaves_.size() && entry_leaves_[k]) {
      const auto& leaves = entry_leaves_[k];
      const auto queued = static_cast<int64_t>(deferred_.size() - queued_before);
      for (size_t d = queued_before; d < deferred_.size(); ++d) deferred_[d].leaves = leaves;
      for (const auto& st : *leaves) {
        st->ran = st->ran || any;
        st->closures_left += queued;
        --st->entries_left;
      }
      for (const auto& st : *leaves) maybe_fire(*st);
    }
  }
  entries_.clear();
  entry_leaves_.clear();
  split_ = false;
}

// Which leaves each entry can contribute to, counted over the entries a gradient can reach:
// an entry is reachable when one of its output slots holds a gradient (a root) or is an input
// of a reachable later entry. Unreachable entries never run, so they do not hold a leaf back.
void Tape::prepare_leaf_hook() {
  entry_leaves_.clear();
  if (!leaf_hook_) return;
  entry_leaves_.resize(entries_.size());
  std::vector<bool> live(slot_grads_.size());
  for (size_t s = 0; s < slot_grads_.size(); ++s) live[s] = slot_grads_[s].defined();
  std::unordered_map<const TensorImpl*, std::shared_ptr<LeafState>> states;
  for (size_t k = entries_.size(); k-- > 0;) {
    const TapeEntry& e = entries_[k];
    bool reachable = false;
    for (int64_t s : e.output_slots) reachable = reachable || live[static_cast<size_t>(s)];
    if (!reachable) continue;
    for (int64_t s : e.input_slots)
      if (s >= 0) live[static_cast<size_t>(s)] = true;
    LeafList leaves;
    for (const Tensor& t : e.leaf_inputs) {
      if (!t.defined()) continue;
      auto& st = states[t.id()];
      if (!st) {
        st = std::make_shared<LeafState>();
        st->leaf = t;
      }
      bool seen = false;  // the same leaf twice in one entry (mul(w, w)) counts once
      for (const auto& l : leaves) seen = seen || l == st;
      if (seen) continue;
      ++st->entries_left;
      leaves.push_back(st);
    }
    if (!leaves.empty()) entry_leaves_[k] = std::make_shared<const LeafList>(std::move(leaves));
  }
}

void Tape::maybe_fire(LeafState& s) {
  if (s.fired || !s.ran || s.entries_left > 0 || s.closures_left > 0) return;
  s.fired = true;
  if (leaf_hook_) leaf_hook_(s.leaf);
}

void Tape::backward_weights() {
  auto work = std::move(deferred_);
  deferred_.clear();
  for (auto& d : work) {
    d.fn();
    d.fn = nullptr;  // releases what the closure saved
    if (!d.leaves) continue;
    for (const auto& st : *d.leaves) --st->closures_left;
    for (const auto& st : *d.leaves) maybe_fire(*st);
  }
}

std::vector<int64_t> Tape::op_counts() const {
  std::vector<int64_t> c(static_cast<size_t>(OpId::count), 0);
  for (const auto& e : entries_) ++c[static_cast<size_t>(e.op)];
  return c;
}

void Tape::clear() {
  entries_.clear();
  slot_grads_.clear();
  slot_keep_.clear();
  deferred_.clear();
  entry_leaves_.clear();
}

TapeGuard::TapeGuard(Tape* tape) : prev_(g_current_tape) { g_current_tape = tape; }
TapeGuard::~TapeGuard() { g_current_tape = prev_; }

}  // namespace ptrain
