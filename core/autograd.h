// core/autograd.h — autograd-lite: a tape of ops for one forward pass.
//
// A Tape records the ops of one forward pass (one micro-batch of one pipeline
// stage); Tape::backward(root) walks it in reverse. Invariants:
//  * Ops record themselves on the *current* tape (TapeGuard sets it for this thread;
//    NoGradGuard clears it). Without a current tape nothing is recorded (no-grad mode).
//  * A tensor produced by a recorded op gets a slot on its tape; gradients of such
//    activations live in the tape (freed as soon as their producer has run backward).
//    Leaves that require grad (parameters) accumulate into their own grad buffer
//    (Tensor::grad_buffer, dtype = the tape's parameter-gradient dtype) across tapes:
//    that is gradient accumulation over micro-batches.
//  * Backward closures accumulate (+=) into input gradients (BackwardCtx::grad_in), or
//    hand over a buffer (BackwardCtx::accumulate) that is aliased when it is the first.
//  * Tensors an op keeps for backward go through SavedTensor, i.e. through the tape's
//    pack/unpack hooks: where activation offload and recompute plug in.
//  * Weight-gradient work may be deferred (BackwardCtx::weight_grad) so a zero-bubble
//    pipeline schedule can run input gradients first and weight gradients later.
//  * Leaf hook (Tape::set_leaf_hook): during backward()/backward_weights() the hook is called
//    exactly once per leaf requiring grad that some entry which ran backward had as an input,
//    right after the last of this tape's contributions to that leaf's gradient (deferred
//    weight-gradient closures included), so its grad_buffer is final for this tape when the
//    hook sees it. Data-parallel gradient reduction starts from there while backward runs on.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/ops_table.h"
#include "core/tensor.h"

namespace ptrain {

class Tape;

/// Hooks applied to every tensor an op saves for backward.
struct SavedTensorHooks {
  virtual ~SavedTensorHooks() = default;
  /// Called at save time; returns an opaque handle (default: keep the tensor).
  virtual std::shared_ptr<void> pack(const Tensor& t) = 0;
  /// Called in backward; returns the tensor (must equal the packed one).
  virtual Tensor unpack(const std::shared_ptr<void>& handle) = 0;
};

/// A tensor kept for backward, through the tape's hooks (if any).
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, SavedTensorHooks* hooks);
  Tensor get() const;
  bool defined() const { return tensor_.defined() || packed_ != nullptr; }

 private:
  Tensor tensor_;
  std::shared_ptr<void> packed_;
  SavedTensorHooks* hooks_ = nullptr;
};

/// What an op's backward closure sees.
class BackwardCtx {
 public:
  /// Gradient w.r.t. output i (undefined if none reached it).
  const Tensor& grad_out(size_t i = 0) const { return grad_out_[i]; }
  /// grad_out(i) for handing to accumulate(): the buffer itself when nothing else can see it
  /// afterwards, else a copy. Read grad_out(i) for other inputs BEFORE handing it over.
  Tensor take_grad_out(size_t i = 0);
  /// Whether weight-gradient work is being deferred (zero-bubble backward).
  bool splitting() const;
  /// Whether input i needs a gradient.
  bool needs_grad(size_t i) const;
  /// Zero-initialised buffer to accumulate (+=) input i's gradient into; undefined if not needed.
  /// Activation gradients have the activation's dtype, parameter gradients the tape's
  /// parameter-gradient dtype; an op rounds (Tensor::round_) what it wrote when it is done.
  Tensor grad_in(size_t i);
  /// Adds g to input i's gradient; takes g over (no copy) when it is the first contribution.
  /// g must not be used by the caller afterwards.
  void accumulate(size_t i, Tensor g);
  /// Runs `fn` now, or queues it when the tape splits weight gradients (zero-bubble).
  /// A queued closure may add to any leaf input of this op (the leaf hook assumes so).
  void weight_grad(std::function<void()> fn);

 private:
  friend class Tape;
  Tape* tape_ = nullptr;
  size_t entry_ = 0;
  std::vector<Tensor> grad_out_;
};

/// One recorded op.
struct TapeEntry {
  OpId op;
  std::vector<Tensor> leaf_inputs;   ///< inputs that are leaves requiring grad (else undefined)
  std::vector<int64_t> input_slots;  ///< slot of each input on this tape, or -1
  std::vector<Shape> input_shapes;   ///< shape of each tape input (to allocate its gradient)
  std::vector<DType> input_dtypes;   ///< dtype of each tape input (its gradient's dtype)
  std::vector<Device> input_devices; ///< device of each tape input (where its gradient lives)
  std::vector<int64_t> output_slots;
  std::function<void(BackwardCtx&)> backward;
};

class Tape {
 public:
  explicit Tape(DType param_grad_dtype = DType::f32);
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;
  ~Tape();

  /// The tape ops record on in this thread (nullptr: no-grad mode).
  static Tape* current();

  /// Whether an op with these inputs must be recorded (a current tape and an input needing grad).
  static bool should_record(std::initializer_list<const Tensor*> inputs);
  /// The tape an op with these inputs records on: current() when should_record(inputs), else nullptr.
  static Tape* recording(std::initializer_list<const Tensor*> inputs) {
    return should_record(inputs) ? current() : nullptr;
  }
  /// Records an op: outputs get slots; `backward` is called with a BackwardCtx in Tape::backward.
  void record(OpId op, const std::vector<const Tensor*>& inputs, const std::vector<Tensor*>& outputs,
              std::function<void(BackwardCtx&)> backward);
  SavedTensor save(const Tensor& t) { return SavedTensor(t, hooks_); }

  /// Backpropagates from `root` seeded with `seed` (default: ones of root's shape).
  /// With split_weight_grads, weight-gradient work is queued for backward_weights().
  void backward(const Tensor& root, Tensor seed = Tensor(), bool split_weight_grads = false);
  /// Backpropagates several roots with their gradients (pipeline stages: output + its grad).
  void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& seeds, bool split_weight_grads = false);
  /// Runs the weight-gradient work queued by backward(..., true).
  void backward_weights();
  bool has_pending_weight_grads() const { return !deferred_.empty(); }
  /// Gradient that reached an activation `t` recorded on this tape, if it is still held
  /// (inputs of a pipeline stage: their gradients are sent to the previous stage).
  Tensor grad_of(const Tensor& t) const;
  /// Marks a non-leaf input (e.g. a received pipeline activation) so grad_of() can return its gradient.
  void watch(Tensor& t);

  void set_hooks(SavedTensorHooks* hooks) { hooks_ = hooks; }
  SavedTensorHooks* hooks() const { return hooks_; }
  /// Whether `t` is an activation recorded on this tape (it has a slot here).
  bool owns(const Tensor& t) const;
  /// Called with each leaf (parameter) as soon as its gradient is final for this tape.
  ///
  /// Invariant (per backward pass): in backward() — and in backward_weights() for contributions that
  /// backward(..., split_weight_grads=true) deferred — hook(leaf) is called exactly once per
  /// leaf that requires grad and was an input of a recorded entry whose backward ran (an
  /// entry runs when a gradient reached one of its outputs), immediately after the last
  /// entry or deferred weight-gradient closure of this tape that can add to its gradient
  /// (entries visited in reverse recording order; deferred closures in queue order). A leaf
  /// used by several entries (a tied embedding: embedding and LM head) fires after the last
  /// of them; a leaf that gets contributions both directly in the input-gradient pass and
  /// from deferred closures fires only after all of them. Leaves no gradient reaches never
  /// fire. Gradient accumulation over several tapes: the hook sees this tape's final value
  /// (install it on the last micro-batch's tape only). Set it before backward(); an empty
  /// function removes it. Exceptions thrown by the hook propagate out of backward().
  void set_leaf_hook(std::function<void(const Tensor& leaf)> hook) { leaf_hook_ = std::move(hook); }
  DType param_grad_dtype() const { return param_grad_dtype_; }
  size_t size() const { return entries_.size(); }
  /// Per-op counts of recorded entries (for tests and the op-coverage counters).
  std::vector<int64_t> op_counts() const;
  void clear();

 private:
  friend class BackwardCtx;
  friend class TapeGuard;
  int64_t new_slot();
  uint64_t id_;  ///< unique for the life of the process (a new tape never matches an old tensor)
  std::vector<TapeEntry> entries_;
  std::vector<Tensor> slot_grads_;
  std::vector<bool> slot_keep_;  ///< slots whose gradient survives backward (watched inputs)
  /// Leaf-hook bookkeeping for one leaf in one backward pass.
  struct LeafState {
    Tensor leaf;
    int64_t entries_left = 0;   ///< reachable entries with this leaf not yet visited
    int64_t closures_left = 0;  ///< queued weight-gradient closures that may add to it, not yet run
    bool ran = false;           ///< an entry with this leaf ran backward
    bool fired = false;
  };
  using LeafList = std::vector<std::shared_ptr<LeafState>>;
  /// A queued weight-gradient closure and the leaves of the entry that queued it.
  struct Deferred {
    std::function<void()> fn;
    std::shared_ptr<const LeafList> leaves;  ///< null when no leaf hook was set
  };
  void prepare_leaf_hook();
  void maybe_fire(LeafState& s);

  std::vector<Deferred> deferred_;
  std::function<void(const Tensor&)> leaf_hook_;
  std::vector<std::shared_ptr<const LeafList>> entry_leaves_;  ///< per entry, its distinct leaves (backward pass)
  bool split_ = false;
  SavedTensorHooks* hooks_ = nullptr;
  DType param_grad_dtype_;
};

/// Makes `tape` the current tape of this thread for the guard's lifetime.
class TapeGuard {
 public:
  explicit TapeGuard(Tape* tape);
  ~TapeGuard();
  TapeGuard(const TapeGuard&) = delete;
  TapeGuard& operator=(const TapeGuard&) = delete;

 private:
  Tape* prev_;
};

/// No-grad mode: nothing is recorded while it lives.
class NoGradGuard : public TapeGuard {
 public:
  NoGradGuard() : TapeGuard(nullptr) {}
};

}  // namespace ptrain
