// A CUDA driver (libcuda.so) that runs kernels on the CPU: the part of the driver API that
// cudarc calls for Quiver's CUDA backend, over host memory, and a runtime that executes the
// kernels compiled as host C++ (cuda_emu.h), every CUDA thread a fiber. See README.md.
//
// Device memory is host memory (a CUdeviceptr is a host address); streams, events and
// asynchronous copies complete at once, in call order (so the order the backend records is
// kept, and what it waits for is done). One kernel runs at a time: a lock serialises
// launches from concurrent host threads; blocks run one after another; inside a block the
// threads run as fibers switched at barriers, votes and shuffles.

#include <sys/mman.h>
#include <ucontext.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emu.h"
#include "registry.h"

namespace emu {

std::map<std::string, Invoker>& registry() {
    static std::map<std::string, Invoker> kernels;
    return kernels;
}

Registrar::Registrar(const char* name, Invoker invoker) { registry()[name] = std::move(invoker); }

namespace {

constexpr std::size_t STACK_BYTES = 128 * 1024;

// Execution contexts of the fibers. On x86-64 a switch saves the callee-saved registers
// and the stack pointer (System V ABI) and loads the other's: no system call, where glibc's
// swapcontext saves and restores the signal mask with one each time (most of the emulator's
// time went there). Elsewhere, ucontext.
#if defined(__x86_64__) && !defined(QUIVER_EMU_UCONTEXT)
extern "C" void emu_switch(void** save_sp, void* next_sp);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

struct Context {
    void* sp = nullptr;
};

// A context that starts `entry` on `stack` (which `entry` must never return from).
void context_init(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
    auto top = reinterpret_cast<std::uintptr_t>(stack + bytes) & ~std::uintptr_t(15);
    auto* slot = reinterpret_cast<std::uint64_t*>(top);
    *--slot = 0;                                          // entry's (absent) return address
    *--slot = reinterpret_cast<std::uint64_t>(entry);     // where emu_switch's ret goes
    for (int i = 0; i < 6; ++i) *--slot = 0;              // rbp, rbx, r12–r15
    std::uint32_t mxcsr;
    std::uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    *--slot = std::uint64_t(mxcsr) | std::uint64_t(fpucw) << 32;
    c.sp = slot;
}

void context_switch(Context& from, Context& to) { emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};

void context_init(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}

void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

enum class State { Runnable, WaitBlock, WaitWarp, Done };

struct Fiber {
    Context ctx;
    dim3 tid;
    unsigned int linear;
    State state;
#ifdef QUIVER_EMU_BANKS
    // The shared-memory accesses (address, bytes) since the warp last synchronised.
    std::vector<std::pair<std::uintptr_t, unsigned int>> accesses;
#endif
};

struct Warp {
    unsigned int live = 0;
    unsigned int arrived = 0;
    std::uint64_t words[32] = {};
    bool votes[32] = {};
};

struct Launch {
    const Invoker* kernel;
    const char* name = "";
    void** params;
    dim3 grid, block, block_idx;
    std::vector<unsigned char> shared;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    unsigned int live = 0;
    unsigned int arrived = 0;
    Fiber* current = nullptr;
    Context scheduler;
};

Launch* g_launch = nullptr;
std::recursive_mutex g_lock;

// Fiber stacks, kept across launches (uninitialised: allocated once, never cleared).
std::vector<std::unique_ptr<char[]>> g_stacks;

char* stack(unsigned int i) {
    while (g_stacks.size() <= i) g_stacks.emplace_back(new char[STACK_BYTES]);
    return g_stacks[i].get();
}

Fiber& me() { return *g_launch->current; }
Warp& my_warp() { return g_launch->warps[me().linear / 32]; }

void yield_to_scheduler() { context_switch(me().ctx, g_launch->scheduler); }

#ifdef QUIVER_EMU_BANKS
// Shared-memory bank conflicts (build.py --banks: the kernels are compiled with
// -fsanitize=thread, whose instrumentation calls the __tsan_* hooks below for every load and
// store; nothing else of ThreadSanitizer is linked). Between two synchronisations of a warp
// its lanes run one after another, each logging its shared-memory accesses; when the warp
// synchronises, the i-th access of every lane is one warp request. A request costs as many
// wavefronts as its worst bank holds distinct 4-byte words (a word read by several lanes is
// broadcast); 8-byte accesses are served a half-warp at a time and 16-byte ones a quarter at
// a time, as on NVIDIA's GPUs (so a conflict-free request of 8-byte words takes two). Per
// kernel: requests, wavefronts, the worst request's, and the wavefronts the requests would
// take without a conflict (one per half- or quarter-warp group with an active lane).
struct BankStats {
    unsigned long long requests = 0, wavefronts = 0, worst = 0, ideal = 0;
};
std::map<std::string, BankStats> g_banks;

// Returns (wavefronts, wavefronts without a conflict).
std::pair<unsigned int, unsigned int> request_wavefronts(
    const std::vector<std::pair<std::uintptr_t, unsigned int>>& req) {
    unsigned int bytes = 4;
    for (const auto& a : req) bytes = std::max(bytes, std::min(a.second & 0xffu, 16u));
    const unsigned int group = bytes >= 16 ? 8 : bytes >= 8 ? 16 : 32;
    unsigned int total = 0, ideal = 0;
    for (unsigned int g0 = 0; g0 < 32; g0 += group) {
        std::vector<std::uintptr_t> words[32];
        bool active = false;
        for (const auto& a : req) {
            // req holds (address, lane << 8 | bytes) here: see analyse_warp.
            const unsigned int lane = a.second >> 8, size = a.second & 0xff;
            if (lane < g0 || lane >= g0 + group) continue;
            active = true;
            for (std::uintptr_t w = a.first / 4; w <= (a.first + std::max(size, 1u) - 1) / 4; ++w) {
                auto& b = words[w % 32];
                if (std::find(b.begin(), b.end(), w) == b.end()) b.push_back(w);
            }
        }
        unsigned int ways = 0;
        for (const auto& b : words) ways = std::max(ways, (unsigned int)b.size());
        total += ways;
        ideal += active ? 1 : 0;
    }
    return {total, ideal};
}

void analyse_warp(unsigned int w);
#endif

void release_block_if_complete() {
    Launch& l = *g_launch;
    if (l.arrived > 0 && l.arrived == l.live) {
        l.arrived = 0;
#ifdef QUIVER_EMU_BANKS
        for (unsigned int w = 0; w < l.warps.size(); ++w) analyse_warp(w);
#endif
        for (Fiber& f : l.fibers)
            if (f.state == State::WaitBlock) f.state = State::Runnable;
    }
}

void release_warp_if_complete(unsigned int w) {
    Launch& l = *g_launch;
    Warp& warp = l.warps[w];
    if (warp.arrived > 0 && warp.arrived == warp.live) {
        warp.arrived = 0;
#ifdef QUIVER_EMU_BANKS
        analyse_warp(w);
#endif
        for (unsigned int i = w * 32; i < l.fibers.size() && i < (w + 1) * 32; ++i)
            if (l.fibers[i].state == State::WaitWarp) l.fibers[i].state = State::Runnable;
    }
}

void fiber_main() {
    Launch& l = *g_launch;
    (*l.kernel)(l.params);
    Fiber& f = me();
    f.state = State::Done;
    l.live -= 1;
    Warp& w = l.warps[f.linear / 32];
    w.live -= 1;
    w.votes[f.linear % 32] = false;
    release_block_if_complete();
    release_warp_if_complete(f.linear / 32);
}

// A fiber's first frame: runs the thread, then hands back to the scheduler for good.
void fiber_entry() {
    fiber_main();
    context_switch(me().ctx, g_launch->scheduler);
    std::abort();  // a finished fiber is never resumed
}

// Runs one block: every thread a fiber, round robin until all are done.
void run_block(Launch& l) {
    const unsigned int n = l.block.x * l.block.y * l.block.z;
    l.live = n;
    l.arrived = 0;
    for (unsigned int w = 0; w < l.warps.size(); ++w) {
        l.warps[w] = Warp{};
        l.warps[w].live = std::min(32u, n - w * 32);
    }
    for (unsigned int i = 0; i < n; ++i) {
        Fiber& f = l.fibers[i];
        f.linear = i;
        f.tid = dim3{i % l.block.x, (i / l.block.x) % l.block.y, i / (l.block.x * l.block.y)};
        f.state = State::Runnable;
        context_init(f.ctx, stack(i), STACK_BYTES, fiber_entry);
    }
    unsigned int done = 0;
    while (done < n) {
        bool progressed = false;
        done = 0;
        for (Fiber& f : l.fibers) {
            if (f.state == State::Done) {
                ++done;
                continue;
            }
            if (f.state != State::Runnable) continue;
            l.current = &f;
            context_switch(l.scheduler, f.ctx);
            progressed = true;
        }
        if (!progressed && done < n) {
            std::fprintf(stderr,
                         "cuda emulator: block (%u, %u, %u) deadlocked: threads wait at barriers "
                         "that not every thread reaches\n",
                         l.block_idx.x, l.block_idx.y, l.block_idx.z);
            std::abort();
        }
    }
#ifdef QUIVER_EMU_BANKS
    for (unsigned int w = 0; w < l.warps.size(); ++w) analyse_warp(w);
#endif
}

#ifdef QUIVER_EMU_BANKS
void analyse_warp(unsigned int w) {
    Launch& l = *g_launch;
    const unsigned int first = w * 32, end = std::min<unsigned int>(first + 32, l.fibers.size());
    std::size_t longest = 0;
    for (unsigned int i = first; i < end; ++i) longest = std::max(longest, l.fibers[i].accesses.size());
    if (longest == 0) return;
    BankStats& stats = g_banks[l.name];
    std::vector<std::pair<std::uintptr_t, unsigned int>> req;
    for (std::size_t k = 0; k < longest; ++k) {
        req.clear();
        for (unsigned int i = first; i < end; ++i) {
            const auto& log = l.fibers[i].accesses;
            if (k < log.size()) req.emplace_back(log[k].first, ((i - first) << 8) | log[k].second);
        }
        const auto [wf, ideal] = request_wavefronts(req);
        stats.requests += 1;
        stats.wavefronts += wf;
        stats.ideal += ideal;
        stats.worst = std::max<unsigned long long>(stats.worst, wf);
    }
    for (unsigned int i = first; i < end; ++i) l.fibers[i].accesses.clear();
}
#endif

}  // namespace

dim3 thread_idx() { return me().tid; }
dim3 block_idx() { return g_launch->block_idx; }
dim3 block_dim() { return g_launch->block; }
dim3 grid_dim() { return g_launch->grid; }
unsigned int lane_id() { return me().linear % 32; }
void* dynamic_shared() { return g_launch->shared.data(); }

void sync_block() {
    Launch& l = *g_launch;
    l.arrived += 1;
    if (l.arrived == l.live) {
        release_block_if_complete();
        return;
    }
    me().state = State::WaitBlock;
    yield_to_scheduler();
}

void sync_warp() {
    Warp& w = my_warp();
    w.arrived += 1;
    if (w.arrived == w.live) {
        release_warp_if_complete(me().linear / 32);
        return;
    }
    me().state = State::WaitWarp;
    yield_to_scheduler();
}

bool vote_any(bool p) {
    Warp& w = my_warp();
    w.votes[lane_id()] = p;
    sync_warp();
    bool any = false;
    for (bool v : w.votes) any = any || v;
    sync_warp();
    return any;
}

bool vote_all(bool p) {
    // All live lanes true: no live lane false (exited lanes vote false, so count them).
    Warp& w = my_warp();
    w.votes[lane_id()] = !p;
    sync_warp();
    bool any_false = false;
    for (bool v : w.votes) any_false = any_false || v;
    sync_warp();
    return !any_false;
}

unsigned int vote_ballot(bool p) {
    Warp& w = my_warp();
    w.votes[lane_id()] = p;
    sync_warp();
    unsigned int bits = 0;
    for (unsigned int i = 0; i < 32; ++i) bits |= (unsigned int)w.votes[i] << i;
    sync_warp();
    return bits;
}

std::uint64_t exchange(std::uint64_t mine, int src) {
    Warp& w = my_warp();
    w.words[lane_id()] = mine;
    sync_warp();
    const std::uint64_t got = (src >= 0 && src < 32) ? w.words[src] : mine;
    sync_warp();
    return got;
}

}  // namespace emu

#ifdef QUIVER_EMU_BANKS
extern "C" char __start_emu_shared[] __attribute__((weak));
extern "C" char __stop_emu_shared[] __attribute__((weak));

namespace emu {
// Logs an access of the running thread when it is to shared memory (the launch's dynamic
// shared memory, or the `__shared__` arrays, which cuda_emu.h places in section emu_shared).
static void record(const void* p, unsigned int bytes) {
    Launch* l = g_launch;
    if (l == nullptr || l->current == nullptr || bytes == 0) return;
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const auto ds = reinterpret_cast<std::uintptr_t>(l->shared.data());
    const auto ss = reinterpret_cast<std::uintptr_t>(__start_emu_shared);
    const auto se = reinterpret_cast<std::uintptr_t>(__stop_emu_shared);
    const bool shared = (a >= ds && a < ds + l->shared.size()) || (a >= ss && a < se);
    if (shared) l->current->accesses.emplace_back(a, std::min(bytes, 16u));
}
}  // namespace emu

#define QUIVER_HOOK __attribute__((visibility("default")))
extern "C" {
QUIVER_HOOK void __tsan_init() {}
QUIVER_HOOK void __tsan_func_entry(void*) {}
QUIVER_HOOK void __tsan_func_exit() {}
QUIVER_HOOK void __tsan_vptr_update(void**, void*) {}
QUIVER_HOOK void __tsan_vptr_read(void**) {}
#define QUIVER_ACCESS(n)                                                              \
    QUIVER_HOOK void __tsan_read##n(void* p) { emu::record(p, n); }                  \
    QUIVER_HOOK void __tsan_write##n(void* p) { emu::record(p, n); }                 \
    QUIVER_HOOK void __tsan_unaligned_read##n(void* p) { emu::record(p, n); }        \
    QUIVER_HOOK void __tsan_unaligned_write##n(void* p) { emu::record(p, n); }       \
    QUIVER_HOOK void __tsan_volatile_read##n(void* p) { emu::record(p, n); }         \
    QUIVER_HOOK void __tsan_volatile_write##n(void* p) { emu::record(p, n); }
QUIVER_ACCESS(1)
QUIVER_ACCESS(2)
QUIVER_ACCESS(4)
QUIVER_ACCESS(8)
QUIVER_ACCESS(16)
QUIVER_HOOK void __tsan_read_range(void* p, unsigned long n) {
    if (n <= 16) emu::record(p, (unsigned int)n);
}
QUIVER_HOOK void __tsan_write_range(void* p, unsigned long n) {
    if (n <= 16) emu::record(p, (unsigned int)n);
}

// A kernel's shared-memory requests, wavefronts, worst request and conflict-free wavefronts
// so far (out[0..4]);
// returns 0 when it has none (or the emulator was built without --banks: no such symbol).
QUIVER_HOOK int quiver_emu_banks(const char* entry, unsigned long long* out) {
    std::lock_guard<std::recursive_mutex> guard(emu::g_lock);
    auto it = emu::g_banks.find(entry);
    if (it == emu::g_banks.end()) return 0;
    out[0] = it->second.requests;
    out[1] = it->second.wavefronts;
    out[2] = it->second.worst;
    out[3] = it->second.ideal;
    return 1;
}
}
#endif

// ---- The driver API ------------------------------------------------------------------------

extern "C" {

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUmodule;
typedef void* CUfunction;
typedef void* CUstream;
typedef void* CUevent;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_NO_BINARY_FOR_GPU = 209,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

// What the process asked of the device, counted per call (issue #13's proof without a GPU):
// kernel launches, host→device and device→host copies (calls and bytes), device-to-device
// copies, memsets and device allocations (calls and bytes). `quiver_emu_stats` reads them in-process; with
// QUIVER_EMU_STATS=FILE they are written to FILE as one JSON object when the process exits.
enum Counter {
    LAUNCHES, H2D_COPIES, H2D_BYTES, D2H_COPIES, D2H_BYTES, D2D_COPIES, MEMSETS, ALLOCS, ALLOC_BYTES,
    COUNTERS
};
static const char* const COUNTER_NAMES[COUNTERS] = {
    "launches", "h2d_copies", "h2d_bytes", "d2h_copies", "d2h_bytes", "d2d_copies", "memsets", "allocs",
    "alloc_bytes",
};
static std::atomic<unsigned long long> g_counters[COUNTERS];
static void count(Counter c, unsigned long long n = 1) { g_counters[c].fetch_add(n, std::memory_order_relaxed); }

// Copies the counters into `out` (at most `n` of them, in COUNTER_NAMES order); returns how
// many there are.
__attribute__((visibility("default"))) unsigned int quiver_emu_stats(unsigned long long* out, unsigned int n) {
    for (unsigned int i = 0; i < n && i < COUNTERS; ++i) out[i] = g_counters[i].load();
    return COUNTERS;
}

namespace {
struct StatsAtExit {
    ~StatsAtExit() {
        const char* path = std::getenv("QUIVER_EMU_STATS");
        if (path == nullptr || *path == 0) return;
        FILE* f = std::fopen(path, "w");
        if (f == nullptr) {
            std::fprintf(stderr, "cuda emulator: cannot write QUIVER_EMU_STATS=%s\n", path);
            return;
        }
        std::fputc('{', f);
        for (int i = 0; i < COUNTERS; ++i)
            std::fprintf(f, "%s\"%s\":%llu", i ? "," : "", COUNTER_NAMES[i], g_counters[i].load());
        std::fputs("}\n", f);
        std::fclose(f);
    }
} g_stats_at_exit;
}  // namespace

static int g_context_token = 1;
static CUcontext g_current = nullptr;

CUresult cuInit(unsigned int) { return CUDA_SUCCESS; }
// NVRTC opens libcuda and asks for the driver's private tables: there are none here.
CUresult cuGetExportTable(const void** table, const void*) {
    *table = nullptr;
    return CUDA_ERROR_NOT_SUPPORTED;
}
// The CUDA version this driver claims: 12.9, or QUIVER_EMU_DRIVER_VERSION (e.g. 12040 for
// an R550 driver), which decides the PTX ISA modules may declare (below).
static int driver_version() {
    const char* v = std::getenv("QUIVER_EMU_DRIVER_VERSION");
    const int n = v ? std::atoi(v) : 0;
    return n > 0 ? n : 12090;
}
CUresult cuDriverGetVersion(int* v) {
    *v = driver_version();
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, (std::size_t)len, "Quiver CUDA emulator (CPU)");
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(std::size_t* bytes, CUdevice) {
    *bytes = (std::size_t)16 << 30;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *v = 1024; break;        // max threads per block
        case 2: *v = 1024; break;        // max block dim x
        case 3: *v = 1024; break;        // max block dim y
        case 4: *v = 64; break;          // max block dim z
        case 5: *v = 2147483647; break;  // max grid dim x
        case 6: *v = 65535; break;       // max grid dim y
        case 7: *v = 65535; break;       // max grid dim z
        case 8: *v = 49152; break;       // shared memory per block
        case 10: *v = 32; break;         // warp size
        case 16: *v = 132; break;        // multiprocessors
        case 75: *v = 9; break;          // compute capability major
        case 76: *v = 0; break;          // compute capability minor
        case 97: *v = 232448; break;     // shared memory per block, opt-in
        case 115: *v = 1; break;         // memory pools: yes, as A100/H100 (cudarc then uses cuMemAllocAsync)
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) {
    *c = &g_context_token;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext c) {
    g_current = c;
    return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = g_current;
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
// Device memory reported: 16 GiB, half of it free; QUIVER_EMU_FREE_MIB sets the free part
// (to exercise the backend's checks against a small device).
CUresult cuMemGetInfo_v2(std::size_t* free_bytes, std::size_t* total) {
    *free_bytes = (std::size_t)8 << 30;
    if (const char* mib = std::getenv("QUIVER_EMU_FREE_MIB")) *free_bytes = std::strtoull(mib, nullptr, 10) << 20;
    *total = (std::size_t)16 << 30;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
    *s = e == CUDA_SUCCESS ? "no error" : "cuda emulator error";
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return CUDA_SUCCESS;
}

// Memory: device allocations are host memory, each ending against an inaccessible guard
// page, so a kernel reading or writing past the end of an allocation (beyond the 256-byte
// rounding CUDA allocations have too) faults at once instead of touching other data.
static std::mutex g_alloc_lock;
static std::map<CUdeviceptr, std::pair<void*, std::size_t>> g_allocations;

CUresult cuMemAlloc_v2(CUdeviceptr* p, std::size_t bytes) {
    count(ALLOCS);
    count(ALLOC_BYTES, bytes);
    const std::size_t page = 4096;
    const std::size_t data = (std::max<std::size_t>(bytes, 1) + 255) / 256 * 256;
    const std::size_t len = (data + page - 1) / page * page + page;
    void* map = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    char* guard = (char*)map + len - page;
    if (mprotect(guard, page, PROT_NONE) != 0) {
        munmap(map, len);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *p = (CUdeviceptr)(guard - data);
    std::lock_guard<std::mutex> hold(g_alloc_lock);
    g_allocations[*p] = {map, len};
    return CUDA_SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    std::lock_guard<std::mutex> hold(g_alloc_lock);
    auto it = g_allocations.find(p);
    if (it == g_allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    munmap(it->second.first, it->second.second);
    g_allocations.erase(it);
    return CUDA_SUCCESS;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, std::size_t bytes, CUstream) { return cuMemAlloc_v2(p, bytes); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return cuMemFree_v2(p); }
// The device's default memory pool, and its release threshold (what the backend sets; the
// emulator's allocations do not go through a pool).
typedef void* CUmemoryPool;
static int g_default_pool = 0;
static unsigned long long g_pool_release_threshold = 0;
CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice) {
    *pool = &g_default_pool;
    return CUDA_SUCCESS;
}
CUresult cuMemPoolSetAttribute(CUmemoryPool pool, int attribute, void* value) {
    if (pool != &g_default_pool || value == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (attribute == 4) g_pool_release_threshold = *static_cast<unsigned long long*>(value);  // RELEASE_THRESHOLD
    return CUDA_SUCCESS;
}
// Reserved and used bytes (5, 7): none, since nothing is pooled here; the threshold (4).
CUresult cuMemPoolGetAttribute(CUmemoryPool pool, int attribute, void* value) {
    if (pool != &g_default_pool || value == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *static_cast<unsigned long long*>(value) = attribute == 4 ? g_pool_release_threshold : 0;
    return CUDA_SUCCESS;
}
CUresult cuMemHostAlloc(void** p, std::size_t bytes, unsigned int) {
    *p = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096 + 4096);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void* p) {
    std::free(p);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, std::size_t n) {
    count(MEMSETS);
    std::memset((void*)p, v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, std::size_t n, CUstream) {
    return cuMemsetD8_v2(p, v, n);
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, std::size_t n) {
    count(H2D_COPIES); count(H2D_BYTES, n);
    std::memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, std::size_t n, CUstream) {
    return cuMemcpyHtoD_v2(dst, src, n);
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, std::size_t n) {
    count(D2H_COPIES); count(D2H_BYTES, n);
    std::memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, std::size_t n, CUstream) {
    return cuMemcpyDtoH_v2(dst, src, n);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, std::size_t n) {
    count(D2D_COPIES);
    std::memmove((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, std::size_t n, CUstream) {
    return cuMemcpyDtoD_v2(dst, src, n);
}

// Streams and events: work completes when it is recorded.
static int g_stream_token;
CUresult cuStreamCreate(CUstream* s, unsigned int) {
    *s = new int(++g_stream_token);
    return CUDA_SUCCESS;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned int flags, int) { return cuStreamCreate(s, flags); }
CUresult cuStreamDestroy_v2(CUstream s) {
    delete (int*)s;
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return CUDA_SUCCESS; }
CUresult cuStreamIsCapturing(CUstream, int* status) {
    *status = 0;
    return CUDA_SUCCESS;
}
CUresult cuEventCreate(CUevent* e, unsigned int) {
    *e = new int(0);
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy_v2(CUevent e) {
    delete (int*)e;
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent, CUstream) { return CUDA_SUCCESS; }
CUresult cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventQuery(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventElapsedTime(float* ms, CUevent, CUevent) {
    *ms = 0.0f;
    return CUDA_SUCCESS;
}

// Modules: the PTX or the cubin names its entry points; the functions are the host-compiled
// kernels. A module is refused as a driver of driver_version() would refuse it: PTX declaring
// an ISA newer than the driver's release reads (CUDA_ERROR_UNSUPPORTED_PTX_VERSION) or
// targeting a GPU newer than sm_90; a cubin built for another architecture than sm_90
// (CUDA_ERROR_NO_BINARY_FOR_GPU), or any cubin on a driver older than CUDA 12.0 (NVRTC 12's
// cubins need a CUDA 12 driver: minor-version compatibility stops at the major version).
struct Module {
    std::vector<std::string> entries;
};
constexpr int DEVICE_SM = 90;
// The newest PTX ISA (10 · major + minor) a driver of CUDA version `v` reads: the PTX ISA
// manual's release history (kernels/src/compile.rs holds the same table).
static int ptx_isa_for_driver(int v) {
    static const int table[][2] = {
        {11000, 70}, {11010, 71}, {11020, 72}, {11030, 73}, {11040, 74}, {11050, 75},
        {11060, 76}, {11070, 77}, {11080, 78}, {12000, 80}, {12010, 81}, {12020, 82},
        {12030, 83}, {12040, 84}, {12050, 85}, {12060, 85}, {12070, 86}, {12080, 87},
        {12090, 88}, {13000, 90}};
    int isa = 60;
    for (auto& row : table)
        if (row[0] <= v) isa = row[1];
    return isa;
}
static CUresult load_ptx(Module* module, const std::string& ptx) {
    int major = 0, minor = 0, sm = 0;
    const std::size_t version = ptx.find(".version ");
    if (version == std::string::npos ||
        std::sscanf(ptx.c_str() + version, ".version %d.%d", &major, &minor) != 2)
        return CUDA_ERROR_INVALID_IMAGE;
    const std::size_t target = ptx.find(".target sm_");
    if (target == std::string::npos || std::sscanf(ptx.c_str() + target, ".target sm_%d", &sm) != 1)
        return CUDA_ERROR_INVALID_IMAGE;
    if (major * 10 + minor > ptx_isa_for_driver(driver_version())) {
        std::fprintf(stderr, "cuda emulator: PTX ISA %d.%d is newer than driver %d reads\n", major,
                     minor, driver_version());
        return CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
    }
    if (sm > DEVICE_SM) return CUDA_ERROR_NO_BINARY_FOR_GPU;
    const std::string tag = ".entry ";
    for (std::size_t at = ptx.find(tag); at != std::string::npos; at = ptx.find(tag, at + 1)) {
        std::size_t end = ptx.find('(', at);
        if (end == std::string::npos) break;
        std::string name = ptx.substr(at + tag.size(), end - at - tag.size());
        while (!name.empty() && name.back() == ' ') name.pop_back();
        module->entries.push_back(name);
    }
    return CUDA_SUCCESS;
}
static std::uint64_t read_at(const unsigned char* image, std::size_t at, std::size_t bytes) {
    std::uint64_t v = 0;
    std::memcpy(&v, image + at, bytes);  // little-endian, as the ELF's e_ident[5] says
    return v;
}
// A 64-bit CUDA ELF (EM_CUDA = 190): its architecture from e_flags (the low byte: the SM
// number, in the ELF ABI of CUDA 12's cubins, which is what NVRTC 12.9 writes; CUDA 13 moved
// it, and a cubin of that ABI would be refused here as for another GPU) and its kernels from
// the `.text.<name>` sections. The image's size is not passed to cuModuleLoadData: the
// section table is trusted, as NVRTC wrote it.
static CUresult load_cubin(Module* module, const unsigned char* image) {
    if (image[4] != 2 || read_at(image, 18, 2) != 190) return CUDA_ERROR_INVALID_IMAGE;
    if (driver_version() < 12000) {
        std::fprintf(stderr, "cuda emulator: a CUDA 12 cubin on driver %d\n", driver_version());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    const std::uint32_t flags = read_at(image, 48, 4);
    if ((int)(flags & 0xff) != DEVICE_SM) {
        std::fprintf(stderr, "cuda emulator: cubin for sm_%u, the device is sm_%d\n", flags & 0xff,
                     DEVICE_SM);
        return CUDA_ERROR_NO_BINARY_FOR_GPU;
    }
    const auto shoff = read_at(image, 40, 8);
    const auto shentsize = read_at(image, 58, 2);
    const auto shnum = read_at(image, 60, 2);
    const auto shstrndx = read_at(image, 62, 2);
    if (shstrndx >= shnum) return CUDA_ERROR_INVALID_IMAGE;
    // Section header: sh_name at 0, sh_offset at 24.
    const auto names = read_at(image, shoff + (std::size_t)shstrndx * shentsize + 24, 8);
    for (std::uint64_t i = 0; i < shnum; i++) {
        const auto name_at = read_at(image, shoff + (std::size_t)i * shentsize, 4);
        const std::string name((const char*)image + names + name_at);
        if (name.rfind(".text.", 0) == 0) module->entries.push_back(name.substr(6));
    }
    return CUDA_SUCCESS;
}
CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    const auto* bytes = (const unsigned char*)image;
    auto* module = new Module;
    const bool elf = bytes[0] == 0x7f && bytes[1] == 'E' && bytes[2] == 'L' && bytes[3] == 'F';
    const CUresult r = elf ? load_cubin(module, bytes) : load_ptx(module, (const char*)image);
    if (r != CUDA_SUCCESS) {
        delete module;
        return r;
    }
    *m = module;
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(CUmodule m) {
    delete (Module*)m;
    return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    auto* module = (Module*)m;
    bool listed = false;
    for (auto& e : module->entries) listed = listed || e == name;
    auto it = emu::registry().find(name);
    if (!listed || it == emu::registry().end()) {
        std::fprintf(stderr, "cuda emulator: no kernel %s (listed in the PTX: %d)\n", name, listed);
        return CUDA_ERROR_NOT_FOUND;
    }
    *f = (void*)&it->second;
    return CUDA_SUCCESS;
}
// Per function: the dynamic shared memory it may use (opted in beyond 48 KiB).
static std::map<CUfunction, int> g_max_dynamic_shared;
constexpr int DEFAULT_DYNAMIC_SHARED = 49152;
constexpr int OPTIN_DYNAMIC_SHARED = 232448;

CUresult cuFuncGetAttribute(int* v, int attribute, CUfunction f) {
    std::lock_guard<std::recursive_mutex> guard(emu::g_lock);
    *v = 0;
    if (attribute == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        auto it = g_max_dynamic_shared.find(f);
        *v = it == g_max_dynamic_shared.end() ? DEFAULT_DYNAMIC_SHARED : it->second;
    }
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction f, int attribute, int value) {
    std::lock_guard<std::recursive_mutex> guard(emu::g_lock);
    if (attribute == 8) {
        if (value < 0 || value > OPTIN_DYNAMIC_SHARED) return CUDA_ERROR_INVALID_VALUE;
        g_max_dynamic_shared[f] = value;
    }
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared_bytes,
                        CUstream, void** params, void** extra) {
    if (extra != nullptr) return CUDA_ERROR_NOT_SUPPORTED;
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (threads == 0 || threads > 1024 || gx == 0 || gy == 0 || gz == 0 || gy > 65535 ||
        gz > 65535)
        return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::recursive_mutex> guard(emu::g_lock);
    count(LAUNCHES);
    auto opted = g_max_dynamic_shared.find(f);
    const int limit = opted == g_max_dynamic_shared.end() ? DEFAULT_DYNAMIC_SHARED : opted->second;
    if (shared_bytes > (unsigned int)std::max(limit, DEFAULT_DYNAMIC_SHARED))
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    emu::Launch l;
    l.kernel = (const emu::Invoker*)f;
#ifdef QUIVER_EMU_BANKS
    for (const auto& [name, invoker] : emu::registry())
        if (&invoker == l.kernel) l.name = name.c_str();
#endif
    l.params = params;
    l.grid = emu::dim3{gx, gy, gz};
    l.block = emu::dim3{bx, by, bz};
    l.shared.assign(shared_bytes + 16, 0xcd);  // uninitialised, as on a GPU
    l.fibers.resize(threads);
    l.warps.resize((threads + 31) / 32);
    emu::g_launch = &l;
    for (unsigned int z = 0; z < gz; ++z)
        for (unsigned int y = 0; y < gy; ++y)
            for (unsigned int x = 0; x < gx; ++x) {
                l.block_idx = emu::dim3{x, y, z};
                emu::run_block(l);
            }
    emu::g_launch = nullptr;
    return CUDA_SUCCESS;
}

}  // extern "C"
