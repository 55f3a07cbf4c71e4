// core/simt/scheduler.cpp — GPU threads as fibers: blocks, barriers, warp operations,
// shared memory, fault reports.
//
// Invariants:
//  * One block runs at a time on the calling host thread. Its threads are fibers (Boost.Context
//    fcontext) created lazily on pooled stacks (guard page below each); a thread that never
//    blocks runs start to end in one switch pair and returns its stack at once.
//  * The scheduler resumes runnable threads in the block's seeded order until every thread has
//    exited or waits; then it resolves rendezvous (warp operations first, then the block
//    barrier), or reports a fault: a barrier some threads can no longer reach, threads waiting
//    at different barriers, a warp mask naming exited/absent lanes, a deadlock.
//  * A fault abandons the block's suspended fibers (their stacks are unpoisoned for ASan and
//    reused); the launch reports "kernel K, block (x,y,z), thread (x,y,z): what".
//  * Every fiber switch is announced to AddressSanitizer (__sanitizer_start/finish_switch_fiber).
#include <boost/context/detail/fcontext.hpp>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <vector>

#include "core/simt/internal.h"


namespace ptrain::simt {
namespace detail {
ThreadState* g_thread = nullptr;
BlockState* g_block = nullptr;
}  // namespace detail

namespace internal {
const char* g_running_kernel = nullptr;
}

namespace {

namespace fc = boost::context::detail;
using internal::kMaxDynamicSharedDefault;
using internal::kMaxSharedOptin;
using internal::kMaxStaticShared;

// ------------------------------------------------------------------ fiber stacks

/// Fiber stack: 256 KB usable (ASan frames are large) above one PROT_NONE guard page.
constexpr size_t kStackBytes = 256 * 1024;

struct Stack {
  char* mapping = nullptr;  ///< start of the mapping (the guard page)
  char* lo = nullptr;       ///< lowest usable byte
  size_t size = 0;          ///< usable bytes
};

class StackPool {
 public:
  Stack get() {
    if (!free_.empty()) {
      Stack s = free_.back();
      free_.pop_back();
      return s;
    }
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("simt: cannot map a fiber stack (out of memory)");
    if (mprotect(m, page, PROT_NONE) != 0) throw std::runtime_error("simt: cannot protect a fiber stack guard page");
    Stack s{static_cast<char*>(m), static_cast<char*>(m) + page, kStackBytes};
    all_.push_back(s);
    return s;
  }
  void put(Stack s) { free_.push_back(s); }
  bool in_guard(const void* p) const {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    auto c = static_cast<const char*>(p);
    for (const Stack& s : all_)
      if (c >= s.mapping && c < s.mapping + page) return true;
    return false;
  }

 private:
  std::vector<Stack> free_, all_;
};
StackPool& stacks() {
  static StackPool p;
  return p;
}

// ------------------------------------------------------------------ ASan fiber annotations

struct AsanSwitch {
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
};
AsanSwitch g_asan;

inline void start_switch(void** fake, const void* bottom, size_t size) {
#if PTRAIN_SIMT_ASAN
  __sanitizer_start_switch_fiber(fake, bottom, size);
#else
  (void)fake, (void)bottom, (void)size;
#endif
}
inline void finish_switch(void* fake, const void** bottom_old, size_t* size_old) {
#if PTRAIN_SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake, bottom_old, size_old);
#else
  (void)fake, (void)bottom_old, (void)size_old;
#endif
}
inline void asan_poison(const void* p, size_t n) {
#if PTRAIN_SIMT_ASAN
  ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}
inline void asan_unpoison(const void* p, size_t n) {
#if PTRAIN_SIMT_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}

// ------------------------------------------------------------------ fibers and blocks

enum class FState : uint8_t { fresh, runnable, waiting, exited };
enum class Wait : uint8_t { none, barrier, warp };

struct Fiber {
  fc::fcontext_t ctx = nullptr;
  Stack stack;
  FState state = FState::fresh;
  Wait wait = Wait::none;
  Site site{};
  int pred = 0, bkind = 0, bresult = 0;             // barrier
  unsigned mask = 0;                                // warp op
  int wkind = 0, param = 0, width = 32;
  uint64_t value = 0, result = 0;
  void* asan_fake = nullptr;
  ThreadState ts{};
};

/// A fault raised inside a fiber (kernel_fault, runtime checks).
struct KernelFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr size_t kRedzone = 64;
constexpr size_t kArenaBytes = (kMaxSharedOptin + kMaxStaticShared + 128 * 2 * kRedzone + 4096 + 4095) / 4096 * 4096;

struct SharedVar {
  const detail::SharedSite* site;
  size_t offset;  ///< in the arena
  size_t bytes;
};

struct BlockRun {
  const internal::KernelLaunch* launch = nullptr;
  BlockState bs{};
  std::vector<Fiber> fibers;
  int nthreads = 0;
  int exited = 0;
  fc::fcontext_t sched_ctx = nullptr;
  Fiber* cur = nullptr;
  bool faulted = false;
  std::string fault;
  // shared memory
  unsigned char* arena = nullptr;
  size_t arena_used = 0;     ///< bytes of the arena in use by this block
  size_t static_bytes = 0;   ///< static shared memory declared so far
  size_t dynamic_offset = 0;
  std::vector<SharedVar> vars;
};
BlockRun g_run;
void* g_sched_fake = nullptr;

std::string dim_str(uint3 d) { return fmt::format("({},{},{})", d.x, d.y, d.z); }

std::string where(const Fiber* f) {
  std::string s = fmt::format("kernel {}, block {}", g_run.launch->name, dim_str(g_run.bs.block_idx));
  if (f) s += fmt::format(", thread {}", dim_str(f->ts.thread_idx));
  return s;
}
std::string site_str(const Site& s) { return fmt::format("{} at {}:{}", s.what, s.file, s.line); }

void set_fault(const Fiber* f, const std::string& what) {
  if (g_run.faulted) return;
  g_run.faulted = true;
  g_run.fault = where(f) + ": " + what;
}

[[noreturn]] void fiber_entry(fc::transfer_t t) {
  finish_switch(nullptr, &g_asan.sched_bottom, &g_asan.sched_size);
  g_run.sched_ctx = t.fctx;
  Fiber* f = g_run.cur;
  try {
    g_run.launch->thunk();
  } catch (const KernelFault& e) {
    set_fault(f, e.what());
  } catch (const std::exception& e) {
    set_fault(f, std::string("exception thrown in the kernel: ") + e.what());
  } catch (...) {
    set_fault(f, "unknown exception thrown in the kernel");
  }
  f = g_run.cur;
  f->state = FState::exited;
  f->wait = Wait::none;
  start_switch(nullptr, g_asan.sched_bottom, g_asan.sched_size);
  fc::jump_fcontext(g_run.sched_ctx, nullptr);
  std::abort();  // never resumed
}

/// From a fiber: back to the scheduler until the rendezvous releases this thread.
void suspend(Fiber* f) {
  f->state = FState::waiting;
  start_switch(&f->asan_fake, g_asan.sched_bottom, g_asan.sched_size);
  fc::transfer_t t = fc::jump_fcontext(g_run.sched_ctx, nullptr);
  finish_switch(f->asan_fake, &g_asan.sched_bottom, &g_asan.sched_size);
  g_run.sched_ctx = t.fctx;
}

void resume(Fiber* f) {
  g_run.cur = f;
  detail::g_thread = &f->ts;
  if (f->state == FState::fresh) {
    f->stack = stacks().get();
    f->ctx = fc::make_fcontext(f->stack.lo + f->stack.size, f->stack.size, fiber_entry);
  }
  f->state = FState::runnable;
  start_switch(&g_sched_fake, f->stack.lo, f->stack.size);
  fc::transfer_t t = fc::jump_fcontext(f->ctx, nullptr);
  finish_switch(g_sched_fake, nullptr, nullptr);
  f->ctx = t.fctx;
  if (f->state == FState::exited) {
    stacks().put(f->stack);
    f->stack = {};
    ++g_run.exited;
  }
}

// ------------------------------------------------------------------ rendezvous resolution

int lane_of(int linear) { return linear & 31; }

/// Resolves the warp operations of one warp; true when some lanes were released.
bool resolve_warp(int warp) {
  const int first = warp * 32;
  const int last = std::min(first + 32, g_run.nthreads);
  bool released = false;
  for (int l = first; l < last; ++l) {
    Fiber& f = g_run.fibers[l];
    if (f.state != FState::waiting || f.wait != Wait::warp) continue;
    const unsigned mask = f.mask;
    const unsigned self = 1u << lane_of(l);
    if (!(mask & self)) {
      set_fault(&f, fmt::format("{}: mask 0x{:08x} does not include the calling lane {}", site_str(f.site), mask, lane_of(l)));
      return false;
    }
    const int exist = last - first;
    const unsigned existing = exist == 32 ? 0xffffffffu : ((1u << exist) - 1u);
    if (mask & ~existing) {
      set_fault(&f, fmt::format("{}: mask 0x{:08x} names lanes that do not exist (this warp has {} threads; mask "
                                "0x{:08x})",
                                site_str(f.site), mask, exist, existing));
      return false;
    }
    bool ready = true;
    for (int k = 0; k < 32; ++k) {
      if (!(mask & (1u << k))) continue;
      Fiber& o = g_run.fibers[first + k];
      if (o.state == FState::exited) {
        set_fault(&f, fmt::format("{}: mask 0x{:08x} names lane {}, which has exited (a shuffle or vote over exited "
                                  "lanes)",
                                  site_str(f.site), mask, k));
        return false;
      }
      if (o.state != FState::waiting || o.wait != Wait::warp) ready = false;
    }
    if (!ready) continue;
    // All lanes of the mask wait at a warp operation: they must be the same one.
    for (int k = 0; k < 32; ++k) {
      if (!(mask & (1u << k))) continue;
      Fiber& o = g_run.fibers[first + k];
      if (o.mask != mask || o.wkind != f.wkind || o.site.line != f.site.line || o.site.file != f.site.file) {
        set_fault(&f, fmt::format("lanes of mask 0x{:08x} wait at different warp operations: lane {} at {} (mask "
                                  "0x{:08x}), lane {} at {} (mask 0x{:08x})",
                                  mask, lane_of(l), site_str(f.site), mask, k, site_str(o.site), o.mask));
        return false;
      }
    }
    // Exchange.
    unsigned ballot = 0;
    for (int k = 0; k < 32; ++k)
      if ((mask & (1u << k)) && g_run.fibers[first + k].value) ballot |= 1u << k;
    for (int k = 0; k < 32; ++k) {
      if (!(mask & (1u << k))) continue;
      Fiber& o = g_run.fibers[first + k];
      switch (o.wkind) {
        case 0: case 1: case 2: case 3: {
          const int w = o.width;
          if (w <= 0 || w > 32 || (w & (w - 1))) {
            set_fault(&o, fmt::format("{}: width {} is not a power of two <= 32", site_str(o.site), w));
            return false;
          }
          const int seg = (k / w) * w;
          int src = k;
          if (o.wkind == 0) src = seg + (((o.param % w) + w) % w);
          if (o.wkind == 1) src = k - o.param >= seg ? k - o.param : k;
          if (o.wkind == 2) src = k + o.param < seg + w ? k + o.param : k;
          if (o.wkind == 3) {
            src = k ^ o.param;
            if (src >= seg + w || src < 0 || src > 31) src = k;
          }
          if (!(mask & (1u << src))) {
            set_fault(&o, fmt::format("{}: lane {} reads lane {}, which is not in mask 0x{:08x}", site_str(o.site), k,
                                      src, mask));
            return false;
          }
          o.result = g_run.fibers[first + src].value;
          break;
        }
        case 4: o.result = ballot; break;
        case 5: o.result = ballot != 0; break;
        case 6: o.result = ballot == mask; break;
        default: o.result = 0; break;
      }
    }
    for (int k = 0; k < 32; ++k) {
      if (!(mask & (1u << k))) continue;
      Fiber& o = g_run.fibers[first + k];
      o.state = FState::runnable;
      o.wait = Wait::none;
    }
    released = true;
  }
  return released;
}

std::string waiting_summary() {
  std::map<std::string, std::vector<int>> groups;
  for (int i = 0; i < g_run.nthreads; ++i) {
    const Fiber& f = g_run.fibers[i];
    if (f.state != FState::waiting) continue;
    std::string key = site_str(f.site);
    if (f.wait == Wait::warp) key += fmt::format(" (mask 0x{:08x})", f.mask);
    groups[key].push_back(i);
  }
  std::string s;
  for (auto& [k, v] : groups) {
    s += fmt::format("\n  {} thread(s) wait at {}: threads", v.size(), k);
    for (size_t i = 0; i < v.size() && i < 8; ++i) s += fmt::format(" {}", v[i]);
    if (v.size() > 8) s += " ...";
  }
  if (g_run.exited) s += fmt::format("\n  {} thread(s) have exited", g_run.exited);
  return s;
}

/// Resolves after a pass; false when the block faulted (or deadlocked).
bool resolve() {
  bool released = false;
  for (int w = 0; w * 32 < g_run.nthreads; ++w) {
    released |= resolve_warp(w);
    if (g_run.faulted) return false;
  }
  if (released) return true;
  // Block barrier.
  int at_barrier = 0;
  const Fiber* first = nullptr;
  for (int i = 0; i < g_run.nthreads; ++i) {
    const Fiber& f = g_run.fibers[i];
    if (f.state == FState::waiting && f.wait == Wait::barrier) {
      ++at_barrier;
      if (!first) first = &f;
    }
  }
  if (at_barrier > 0 && g_run.exited > 0) {
    set_fault(first, fmt::format("{} reached by {} of {} threads while {} have exited: a barrier inside a branch "
                                 "not all threads take{}",
                                 site_str(first->site), at_barrier, g_run.nthreads, g_run.exited, waiting_summary()));
    return false;
  }
  if (at_barrier == g_run.nthreads) {
    for (int i = 0; i < g_run.nthreads; ++i) {
      const Fiber& f = g_run.fibers[i];
      if (f.site.line != first->site.line || f.site.file != first->site.file || f.bkind != first->bkind) {
        set_fault(&f, fmt::format("threads of the block wait at different barriers (barriers in both arms of a "
                                  "branch?):{}",
                                  waiting_summary()));
        return false;
      }
    }
    int count = 0;
    for (const Fiber& f : g_run.fibers) count += f.pred;
    const int kind = first->bkind;
    const int r = kind == 1 ? count : kind == 2 ? (count == g_run.nthreads) : kind == 3 ? (count > 0) : 0;
    for (Fiber& f : g_run.fibers) {
      f.bresult = r;
      f.state = FState::runnable;
      f.wait = Wait::none;
    }
    return true;
  }
  set_fault(nullptr, fmt::format("deadlock: no thread of the block can proceed{}", waiting_summary()));
  return false;
}

// ------------------------------------------------------------------ shared memory

void shared_begin_block(size_t dynamic) {
  if (!g_run.arena) {
    g_run.arena = static_cast<unsigned char*>(std::aligned_alloc(4096, kArenaBytes));
    std::memset(g_run.arena, 0xFF, kArenaBytes);
    asan_poison(g_run.arena, kArenaBytes);
  }
  g_run.vars.clear();
  g_run.static_bytes = 0;
  g_run.dynamic_offset = kRedzone;
  g_run.arena_used = kRedzone + ((dynamic + 15) / 16) * 16 + kRedzone;
  asan_unpoison(g_run.arena + g_run.dynamic_offset, dynamic);
  std::memset(g_run.arena + g_run.dynamic_offset, 0xFF, dynamic);
}

/// Checks the redzones (without ASan an out-of-bounds write lands there) and re-poisons.
void shared_end_block(size_t dynamic) {
  auto check = [&](size_t from, size_t n, const std::string& what) {
    for (size_t i = 0; i < n; ++i)
      if (g_run.arena[from + i] != 0xFF) {
        set_fault(nullptr, fmt::format("out-of-bounds write to shared memory {} (redzone byte {} overwritten)", what,
                                       static_cast<long>(i)));
        return;
      }
  };
#if !PTRAIN_SIMT_ASAN
  if (!g_run.faulted) {
    check(0, kRedzone, "before the dynamic shared memory");
    check(g_run.dynamic_offset + ((dynamic + 15) / 16) * 16, kRedzone, "after the dynamic shared memory");
    for (const SharedVar& v : g_run.vars) {
      check(v.offset - kRedzone, kRedzone, fmt::format("before '{}'", v.site->name));
      check(v.offset + v.bytes, kRedzone, fmt::format("after '{}'", v.site->name));
    }
  }
  // Restore the pattern of everything this block used.
  std::memset(g_run.arena, 0xFF, std::min(g_run.arena_used, kArenaBytes));
#else
  (void)check;
  asan_unpoison(g_run.arena, g_run.arena_used);
  std::memset(g_run.arena, 0xFF, g_run.arena_used);
  asan_poison(g_run.arena, g_run.arena_used);
#endif
}

Fiber* current_fiber() { return g_run.cur; }

}  // namespace

// ------------------------------------------------------------------ kernel-facing entry points

namespace detail {

int barrier(Site site, int pred, int kind) {
  Fiber* f = current_fiber();
  f->wait = Wait::barrier;
  f->site = site;
  f->pred = pred;
  f->bkind = kind;
  suspend(f);
  return f->bresult;
}

uint64_t warp_op(Site site, unsigned mask, int kind, uint64_t value, int param, int width) {
  Fiber* f = current_fiber();
  f->wait = Wait::warp;
  f->site = site;
  f->mask = mask;
  f->wkind = kind;
  f->value = value;
  f->param = param;
  f->width = width;
  suspend(f);
  return f->result;
}

unsigned active_mask() {
  const int l = current_fiber()->ts.linear;
  const int first = l & ~31;
  unsigned m = 0;
  for (int k = 0; k < 32 && first + k < g_run.nthreads; ++k)
    if (g_run.fibers[first + k].state != FState::exited) m |= 1u << k;
  return m;
}

void* static_shared(const SharedSite* site) {
  for (const SharedVar& v : g_run.vars)
    if (v.site == site) return g_run.arena + v.offset;
  const size_t align = std::max<size_t>(site->align, 16);
  size_t off = ((g_run.arena_used + align - 1) / align) * align;
  if (g_run.static_bytes + site->bytes > kMaxStaticShared)
    throw KernelFault(fmt::format("static shared memory '{}' brings the kernel to {} bytes, over the RTX 4090 limit of "
                                  "{} bytes (48 KB); use dynamic shared memory (opt-in up to 99 KB)",
                                  site->name, g_run.static_bytes + site->bytes, kMaxStaticShared));
  const size_t dyn = g_run.launch->dynamic_smem;
  if (g_run.static_bytes + site->bytes + dyn > kMaxSharedOptin)
    throw KernelFault(fmt::format("static ({} bytes) plus dynamic ({} bytes) shared memory exceed the RTX 4090 "
                                  "limit of {} bytes per block",
                                  g_run.static_bytes + site->bytes, dyn, kMaxSharedOptin));
  if (off + site->bytes + kRedzone > kArenaBytes) throw KernelFault("shared memory arena exhausted (too many variables)");
  g_run.vars.push_back({site, off, site->bytes});
  g_run.static_bytes += site->bytes;
  g_run.arena_used = off + site->bytes + kRedzone;
  asan_unpoison(g_run.arena + off, site->bytes);
  std::memset(g_run.arena + off, 0xFF, site->bytes);
  return g_run.arena + off;
}

void* dynamic_shared() { return g_run.arena + g_run.dynamic_offset; }

void kernel_fault(const char* message) { throw KernelFault(message); }

}  // namespace detail

// ------------------------------------------------------------------ launches

namespace internal {

namespace {
/// order[i] for n items: seed 0 identity, seed 1 reversed, else a seeded Fisher-Yates shuffle.
void make_order(std::vector<int>& order, int n, uint64_t seed, uint64_t salt) {
  order.resize(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  if (seed == 0) return;
  if (seed == 1) {
    std::reverse(order.begin(), order.end());
    return;
  }
  uint64_t s = mix(seed ^ mix(salt));
  for (int i = n - 1; i > 0; --i) {
    s = mix(s);
    const int j = static_cast<int>(s % static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
}
}  // namespace

bool in_stack_guard(const void* p) { return stacks().in_guard(p); }

bool run_kernel(const KernelLaunch& k, std::string& fault) {
  const int nthreads = static_cast<int>(k.block.x * k.block.y * k.block.z);
  const int64_t nblocks = static_cast<int64_t>(k.grid.x) * k.grid.y * k.grid.z;
  g_run.launch = &k;
  g_run.nthreads = nthreads;
  g_run.fibers.resize(nthreads);
  g_run.bs.block_dim = k.block;
  g_run.bs.grid_dim = k.grid;
  detail::g_block = &g_run.bs;
  g_running_kernel = k.name.c_str();
  std::vector<int> thread_order, block_order;
  std::vector<int64_t> blocks(nblocks);
  // Block order: seeded over the whole grid (int indices suffice for the emulator's grids).
  {
    std::vector<int> bo;
    make_order(bo, static_cast<int>(nblocks), seed(), k.launch_no * 2 + 1);
    for (int64_t i = 0; i < nblocks; ++i) blocks[i] = bo[i];
  }
  bool ok = true;
  for (int64_t bi = 0; bi < nblocks && ok; ++bi) {
    const int64_t b = blocks[bi];
    g_run.bs.block_idx = make_uint3(static_cast<unsigned>(b % k.grid.x), static_cast<unsigned>((b / k.grid.x) % k.grid.y),
                                    static_cast<unsigned>(b / (static_cast<int64_t>(k.grid.x) * k.grid.y)));
    g_run.exited = 0;
    g_run.faulted = false;
    for (int i = 0; i < nthreads; ++i) {
      Fiber& f = g_run.fibers[i];
      f.state = FState::fresh;
      f.wait = Wait::none;
      f.pred = 0;
      f.ts.linear = i;
      f.ts.thread_idx = make_uint3(i % k.block.x, (i / k.block.x) % k.block.y, i / (k.block.x * k.block.y));
    }
    shared_begin_block(k.dynamic_smem);
    make_order(thread_order, nthreads, seed(), k.launch_no * 0x10001ull + static_cast<uint64_t>(b) * 2 + 2);
    while (!g_run.faulted) {
      for (int idx : thread_order) {
        Fiber& f = g_run.fibers[idx];
        if (f.state == FState::fresh || f.state == FState::runnable) {
          resume(&f);
          if (g_run.faulted) break;
        }
      }
      if (g_run.faulted || g_run.exited == nthreads) break;
      if (!resolve()) break;
    }
    if (g_run.faulted) {
      // Abandon the suspended fibers: their stacks go back to the pool, unpoisoned.
      for (Fiber& f : g_run.fibers) {
        if (f.stack.lo) {
          asan_unpoison(f.stack.lo, f.stack.size);
          stacks().put(f.stack);
          f.stack = {};
        }
        f.state = FState::exited;
      }
    }
    shared_end_block(k.dynamic_smem);
    if (g_run.faulted) {
      fault = g_run.fault;
      ok = false;
    }
  }
  g_running_kernel = nullptr;
  detail::g_thread = nullptr;
  return ok;
}

}  // namespace internal
}  // namespace ptrain::simt
