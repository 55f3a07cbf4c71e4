// core/recompute.cpp — see recompute.h.
#include "core/recompute.h"

#include <utility>

namespace ptrain {

namespace detail {

/// One region's forward, and what its rerun produced.
struct Region {
  RegionKind kind = RegionKind::block;
  std::vector<Tensor> inputs;      ///< kept for the rerun
  std::vector<bool> input_on_tape; ///< input was an activation of the tape (rerun: an alias, watched)
  /// Inputs that went to the inner hooks when the region's forward ended (null: kept in `inputs`).
  std::vector<std::shared_ptr<void>> packed_inputs;
  RegionFn fn;
  int64_t saves = 0;               ///< saves made inside the region in forward (kept ones too)
  std::vector<char> live;          ///< per save: dropped, and a handle still needs it
  std::vector<Tensor> replay;      ///< per save, after the rerun (freed as handles die)
  std::vector<Tensor> outputs;     ///< the rerun's outputs
  bool done = false;

  void release(int64_t i) {
    live[static_cast<size_t>(i)] = 0;
    if (done) replay[static_cast<size_t>(i)] = Tensor();
  }
  bool holds_input_storage(const Tensor& t) const {
    for (const Tensor& in : inputs)
      if (in.defined() && in.id()->storage == t.id()->storage) return true;
    return false;
  }
};

}  // namespace detail

namespace {

using detail::Region;

/// What pack() hands out: a kept tensor (or the inner hooks' handle), or a place in a region.
struct Handle {
  Tensor kept;
  std::shared_ptr<void> inner;
  std::shared_ptr<Region> region;
  int64_t index = -1;   ///< save index in the region, or output index when `output`
  bool output = false;
  Handle() = default;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() {
    if (region && !output) region->release(index);
  }
};

/// The rerun's hooks: record the i-th save into the region, keep nothing themselves.
struct CaptureHooks : SavedTensorHooks {
  Region* r;
  int64_t count = 0;
  explicit CaptureHooks(Region* region) : r(region) {}
  std::shared_ptr<void> pack(const Tensor& t) override {
    const int64_t i = count++;
    if (i < r->saves && r->live[static_cast<size_t>(i)]) r->replay[static_cast<size_t>(i)] = t;
    return nullptr;
  }
  Tensor unpack(const std::shared_ptr<void>&) override {
    PT_CHECK(false, "a tensor saved while recomputing a region was read back (recompute reruns forward only)");
    return Tensor();
  }
};

}  // namespace

std::string_view recompute_mode_name(RecomputeMode m) {
  switch (m) {
    case RecomputeMode::none: return "none";
    case RecomputeMode::selective: return "selective";
    case RecomputeMode::full: return "full";
  }
  return "?";
}

RecomputeHooks::RecomputeHooks(RecomputeMode mode, SavedTensorHooks* inner) : mode_(mode), inner_(inner) {}
RecomputeHooks::~RecomputeHooks() = default;

bool RecomputeHooks::drops(RegionKind kind) const {
  switch (mode_) {
    case RecomputeMode::none: return false;
    case RecomputeMode::selective: return kind == RegionKind::attention_core || kind == RegionKind::activation;
    case RecomputeMode::full: return kind == RegionKind::block;
  }
  return false;
}

std::shared_ptr<void> RecomputeHooks::keep(const Tensor& t) {
  ++stats_.kept;
  auto h = std::make_shared<Handle>();
  if (inner_)
    h->inner = inner_->pack(t);
  else
    h->kept = t;
  return h;
}

std::shared_ptr<void> RecomputeHooks::pack(const Tensor& t) {
  if (!stack_.empty()) {
    const std::shared_ptr<Region>& r = stack_.back();
    if (t.requires_grad() || r->holds_input_storage(t)) {  // kept, but counted: the rerun's i-th save is this one
      ++r->saves;
      r->live.push_back(0);
      return keep(t);
    }
    ++stats_.dropped;
    auto h = std::make_shared<Handle>();
    h->region = r;
    h->index = r->saves++;
    r->live.push_back(1);
    return h;
  }
  if (tape_ && !outputs_.empty() && tape_->owns(t)) {
    auto it = outputs_.find(t.id()->slot);
    if (it != outputs_.end()) {
      ++stats_.dropped;
      auto h = std::make_shared<Handle>();
      h->region = it->second.first;
      h->index = static_cast<int64_t>(it->second.second);
      h->output = true;
      return h;
    }
  }
  return keep(t);
}

Tensor RecomputeHooks::unpack(const std::shared_ptr<void>& handle) {
  outputs_.clear();  // backward has begun: no more saves; regions live on in their handles
  auto* h = static_cast<Handle*>(handle.get());
  if (!h->region) return inner_ && h->inner ? inner_->unpack(h->inner) : h->kept;
  Region& r = *h->region;
  if (!r.done) recompute(r);
  const Tensor& t = h->output ? r.outputs.at(static_cast<size_t>(h->index)) : r.replay[static_cast<size_t>(h->index)];
  PT_CHECK(t.defined(), "recompute: save {} of a {} region came back undefined", h->index,
           r.kind == RegionKind::block ? "block" : r.kind == RegionKind::attention_core ? "attention" : "activation");
  return t;
}

void RecomputeHooks::recompute(Region& r) {
  ++stats_.recomputed;
  r.replay.assign(static_cast<size_t>(r.saves), Tensor());
  Tape scratch;
  CaptureHooks capture(&r);
  scratch.set_hooks(&capture);
  std::vector<Tensor> in;
  in.reserve(r.inputs.size());
  for (size_t i = 0; i < r.inputs.size(); ++i) {
    if (i < r.packed_inputs.size() && r.packed_inputs[i]) r.inputs[i] = inner_->unpack(r.packed_inputs[i]);
    if (r.input_on_tape[i]) {
      Tensor alias = r.inputs[i].view(r.inputs[i].shape());  // same storage, a new identity
      scratch.watch(alias);
      in.push_back(alias);
    } else {
      in.push_back(r.inputs[i]);
    }
  }
  {
    TapeGuard guard(&scratch);
    r.outputs = r.fn(in);
  }
  PT_CHECK(capture.count == r.saves,
           "recompute: the rerun of a region saved {} tensors, its forward saved {} (a region's function must be "
           "deterministic)",
           capture.count, r.saves);
  r.done = true;
  for (size_t i = 0; i < r.packed_inputs.size(); ++i)
    if (r.packed_inputs[i]) r.inputs[i] = Tensor();  // the inner hooks' handle keeps what backward still needs
  for (size_t i = 0; i < r.live.size(); ++i)
    if (!r.live[i]) r.replay[i] = Tensor();
}

std::vector<Tensor> recompute_region(RegionKind kind, const std::vector<Tensor>& inputs, const RegionFn& fn) {
  Tape* tape = Tape::current();
  auto* policy = tape ? dynamic_cast<RecomputeHooks*>(tape->hooks()) : nullptr;
  if (!policy || !policy->drops(kind) || !policy->stack_.empty()) return fn(inputs);
  bool recorded = false;
  auto r = std::make_shared<Region>();
  r->kind = kind;
  r->inputs = inputs;
  r->fn = fn;
  for (const Tensor& t : inputs) {
    const bool on_tape = t.defined() && tape->owns(t);
    r->input_on_tape.push_back(on_tape);
    recorded = recorded || on_tape || (t.defined() && t.requires_grad());
  }
  if (!recorded) return fn(inputs);  // nothing here will be recorded, so nothing saved
  PT_CHECK(!policy->tape_ || policy->tape_ == tape, "a RecomputeHooks policy serves one tape");
  policy->tape_ = tape;
  ++policy->stats_.regions;
  struct Pop {
    RecomputeHooks* p;
    ~Pop() { p->stack_.pop_back(); }
  };
  policy->stack_.push_back(r);
  std::vector<Tensor> outs;
  {
    Pop pop{policy};
    outs = fn(inputs);
  }
  // The region's activation inputs go through the inner hooks too (activation offload moves
  // them like any kept save): the region holds their handles, not their device memory.
  if (policy->inner_) {
    r->packed_inputs.resize(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i)
      if (r->input_on_tape[i] && !inputs[i].requires_grad()) {
        r->packed_inputs[i] = policy->inner_->pack(inputs[i]);
        r->inputs[i] = Tensor();
      }
  }
  if (kind == RegionKind::activation)
    for (size_t i = 0; i < outs.size(); ++i)
      if (tape->owns(outs[i])) policy->outputs_[outs[i].id()->slot] = {r, i};
  return outs;
}

Tensor recompute_region(RegionKind kind, const std::vector<Tensor>& inputs,
                        const std::function<Tensor(const std::vector<Tensor>&)>& fn) {
  return recompute_region(kind, inputs, [fn](const std::vector<Tensor>& in) { return std::vector<Tensor>{fn(in)}; })
      .at(0);
}

}  // namespace ptrain
