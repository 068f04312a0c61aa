// The engine: a fixed pool of worker threads that runs every VM of one VMM.
//
// A VM is queued when it has work (its first run, a message, an expired
// deadline) and takes no thread while it waits. KVM_RUN never runs on the
// Node main thread or the libuv pool.
#pragma once

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "engine/events.h"
#include "engine/machine.h"
#include "kvm/system.h"
#include "kvm/vcpu_state.h"

namespace vmm {

struct EngineOptions {
    unsigned workers = 2;
    uint64_t slice_ms = 10;  // time a guest may run while others are queued
    uint64_t spin_us = 300;  // time an idle worker polls the queue before sleeping
    // KVM contexts kept for reuse after their VMs end or hibernate; more are
    // closed once unused for kPoolTrimNs.
    unsigned pool_size = 32;
    // Maximum KVM contexts alive, in VMs and in the pool. 0 picks a default
    // from available memory and the file descriptor limit.
    uint64_t max_resident = 0;
    // A VM that waits this long gives its KVM context back (hibernates);
    // 0 never hibernates idle VMs (the cap above still evicts).
    uint64_t idle_ms = 250;
};

struct EngineStats {
    uint64_t vms = 0;
    uint64_t created = 0, running = 0, waiting = 0, hibernated = 0, exited = 0;
    uint64_t pooled_contexts = 0;
    uint64_t resident_contexts = 0;  // KVM contexts held by VMs and the pool
    uint64_t max_resident = 0;
    uint64_t max_resident_reached = 0;
    uint64_t private_bytes = 0, shared_bytes = 0;
    uint64_t page_store_bytes = 0;  // hibernated VMs' records and shared pages
    uint64_t hibernations = 0, wakes = 0;
    // Wake latency (from the worker taking the VM to its context being ready)
    // in buckets of powers of two microseconds: bucket i counts wakes of less
    // than 2^i us (the last bucket, anything longer).
    uint64_t wake_histogram[24] = {};
};

struct VmStats {
    VmState state;
    uint64_t exits, hypercalls, hypercall_errors, calls, replies, run_ns;
    uint64_t console_bytes, console_dropped;
    uint64_t private_bytes, shared_bytes;
    uint64_t ram_size;
};

class Engine {
public:
    Engine(std::shared_ptr<KvmSystem> kvm, EngineOptions options,
           std::function<void()> notify);
    ~Engine();
    Engine(const Engine &) = delete;
    Engine &operator=(const Engine &) = delete;

    // Registers a VM; nothing touches KVM until start().
    uint64_t create(std::shared_ptr<Image> image, uint64_t ram_size, std::string cmdline);

    // Registers a clone of `snapshot`. It starts where the snapshot's VM
    // stood, with a new VM id and random seed.
    uint64_t create_clone(std::shared_ptr<const Snapshot> snapshot);

    // Captures the VM's memory and vCPU state; emits kSnapshot or
    // kSnapshotFailed with `request_id`. A running VM is paused for the
    // capture and continues after it.
    // Codes: ERR_VM_DESTROYED, ERR_VM_NOT_STARTED, ERR_VM_EXITED.
    Status snapshot(uint64_t vm_id, uint64_t request_id);

    EngineStats engine_stats();

    // Sets how many pages the guest should hand back; a waiting guest is
    // woken (its wait returns -VMM_EINTR) to act on it.
    // Codes: ERR_VM_DESTROYED, ERR_VM_EXITED, ERR_BALLOON_TARGET.
    Status set_balloon(uint64_t vm_id, uint64_t pages);
    Status balloon_stats(uint64_t vm_id, BalloonStats *out);

    // Builds `count` KVM contexts ready for clones of `snapshot` (full vCPU
    // state restored, its memory mapped) and pools them, so that those
    // clones start without creating a KVM VM. Runs on the workers between
    // VMs; emits kPrewarmed with `request_id` when done, or kPrewarmFailed.
    // Pooled contexts above the pool size stay until a VM uses them.
    Status prewarm(std::shared_ptr<const Snapshot> snapshot, uint64_t count, uint64_t request_id);

    // Queues the VM's first run with `first` already in its inbox, so that
    // the first run serves them. Emits kStarted or kStartFailed, and kReply
    // for each message as call() does.
    // Codes: ERR_VM_DESTROYED, ERR_VM_ALREADY_STARTED, ERR_VMM_CLOSED.
    Status start(uint64_t vm_id, std::vector<Message> first = {});

    // Queues a message. The reply arrives as kReply with the same call id.
    // Codes: ERR_VM_DESTROYED, ERR_VM_NOT_STARTED, ERR_VM_EXITED.
    Status call(uint64_t vm_id, uint64_t call_id, std::vector<uint8_t> data);

    // Ends the VM with reason "killed". A running vCPU is stopped with
    // immediate_exit and a signal. Idempotent. Codes: ERR_VM_DESTROYED.
    Status kill(uint64_t vm_id);

    // Kills the VM if needed and removes it from the engine. Its KVM context
    // and memory are released as soon as no worker uses them. Idempotent.
    void destroy(uint64_t vm_id);

    Status stats(uint64_t vm_id, VmStats *out);

    // Reads the VM's state without touching its memory; false if unknown.
    bool state(uint64_t vm_id, VmState *out);

    // Moves the VM's pending console bytes into `out`.
    void take_console(uint64_t vm_id, std::string *out);

    std::vector<Event> drain_events() { return events_.drain(); }

    // Stops every VM and joins the threads. Safe to call twice.
    void shutdown();


private:
    struct Worker {
        std::thread thread;
        pthread_t handle{};
        std::shared_ptr<Machine> current;  // guarded by mutex_
    };
    struct PooledContext {
        std::unique_ptr<KvmContext> kvm;
        std::unique_ptr<GuestMemory> memory;
        std::shared_ptr<const MemorySource> source;
        // Snapshot whose full vCPU state was last set on this context, as
        // long as its guests stayed in user mode since (no crash). A clone of
        // the same snapshot then needs only restore_user_state().
        std::shared_ptr<const Snapshot> restored_from;
        VcpuState::UserStateMatch match;  // of the vCPU against restored_from
        uint64_t pooled_ns = 0;  // monotonic time it entered the pool
        bool prewarmed = false;  // built by prewarm(), kept until a VM uses it
    };

    struct Timer {
        uint64_t deadline_ns;
        uint64_t seq;
        std::weak_ptr<Machine> machine;
        bool idle = false;  // hibernation timer, not a wait deadline
        bool operator>(const Timer &other) const { return deadline_ns > other.deadline_ns; }
    };

    void worker_main(unsigned index);
    void watchdog_main();
    void run_machine(const std::shared_ptr<Machine> &m, bool boot);
    Status boot_machine(Machine &m);
    // Takes a pooled context whose RAM has `ram_size` bytes, preferring one
    // that already maps `source`, or builds a new one. The result maps
    // `source` with no page of an earlier guest left.
    Status acquire_context(uint64_t ram_size, const std::shared_ptr<const MemorySource> &source,
                           PooledContext *out);
    // Moves the pooled context that has been unused longest into `out` when
    // the pool contains more than pool_size and that context has been unused
    // for kPoolTrimNs. Prewarmed contexts stay. Otherwise returns false and
    // sets `*next_ns` to when one becomes due (0 if none will).
    bool take_stale_pooled_locked(uint64_t now_ns, PooledContext *out, uint64_t *next_ns);
    // Moves a pooled context of `ram_size` into `out`, preferring one that
    // maps `source_id`. Returns false when none fits.
    bool take_pooled_locked(uint64_t ram_size, uint64_t source_id, PooledContext *out);
    // Makes a pooled context map `source`. release_context restored the
    // last guest's written pages, so one that maps it already is clean.
    static Status point_at_source(const std::shared_ptr<const MemorySource> &source,
                                  PooledContext *ctx);
    // Returns a finished VM's context to the pool, or frees it when the pool is full.
    void release_context(Machine &m, std::unique_ptr<KvmContext> kvm,
                         std::unique_ptr<GuestMemory> memory, bool crashed);
    Status collect_dirty(Machine &m);
    // Moves a waiting VM's state into the page store and returns its context
    // to the pool. The calling worker owns the VM until this returns. After
    // that it may touch the VM only when `killed` is set: a kill arrived, and
    // the caller must finish() the VM.
    Status hibernate(const std::shared_ptr<Machine> &m, bool *killed);
    // Restores a hibernated VM into a context. The calling worker owns it.
    Status wake(Machine &m);
    // Lists or unlists a resident waiting VM as an eviction candidate.
    void lru_add_locked(const std::shared_ptr<Machine> &m);
    void lru_remove_locked(Machine &m);
    // Hibernates the least recently parked VM to free a context. Returns
    // false when no VM can give one back.
    bool evict_one();
    void handle_snapshot_requests(const std::shared_ptr<Machine> &m);
    // Queues a VM that found no free context (state kStarting or kRunnable)
    // until one comes back.
    void wait_for_context(const std::shared_ptr<Machine> &m, VmState state);
    // Moves the first VM waiting for a context back to the run queue.
    void retry_context_waiter_locked();
    // Fails the VM's queued calls with `status` and leaves it hibernated.
    void reject_inbox(const std::shared_ptr<Machine> &m, const Status &status);
    // Records that a resident VM began to wait: eviction candidate, idle timer.
    void park_locked(const std::shared_ptr<Machine> &m);
    // Emits the VM's kStarted event if it has not gone out yet.
    void push_started_locked(Machine &m);
    // Emits `event`, preceded by the VM's kStarted event if that has not
    // gone out yet, in one queue operation so that JavaScript gets both in
    // one batch.
    void push_after_started(Machine &m, Event event);
    // Builds one pooled context for prewarm(); returns its status.
    Status prewarm_one(const std::shared_ptr<const Snapshot> &snapshot);
    // Runs the vCPU until it waits, exits or is preempted.
    void run_vcpu(const std::shared_ptr<Machine> &m);
    void finish(const std::shared_ptr<Machine> &m, ExitInfo info);
    void kick_locked(Machine &m);
    void fire_timers_locked(uint64_t now_ns);
    void make_runnable_locked(const std::shared_ptr<Machine> &m);
    // Wakes a sleeping worker for a newly queued VM, unless one is polling.
    void wake_worker_locked();
    std::shared_ptr<Machine> find_locked(uint64_t vm_id);
    // Finds a VM that was started and has not exited. Codes: ERR_VM_DESTROYED,
    // ERR_VM_NOT_STARTED, ERR_VM_EXITED.
    Status find_live_locked(uint64_t vm_id, std::shared_ptr<Machine> *out);
    // Completes a VMM_HC_WAIT that the guest is stopped in: copies the next
    // message in or reports the timeout. Returns false when nothing is ready.
    bool complete_wait_locked(Machine &m);

    friend class HypercallHandler;

    std::shared_ptr<KvmSystem> kvm_;
    EngineOptions options_;
    EventQueue events_;

    std::mutex mutex_;
    std::condition_variable work_cv_;
    std::condition_variable watchdog_cv_;
    bool stopping_ = false;
    uint64_t next_id_ = 1;
    std::unordered_map<uint64_t, std::shared_ptr<Machine>> machines_;
    std::deque<std::shared_ptr<Machine>> run_queue_;
    // Mirror of run_queue_.size() that idle workers poll without the lock.
    // Release on store (under mutex_) and acquire on load, so a worker that
    // reads a non-zero length then takes mutex_ and finds the entry.
    std::atomic<size_t> queue_length_{0};
    std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
    std::vector<Worker> workers_;
    std::thread watchdog_;
    unsigned running_ = 0;
    std::vector<PooledContext> pool_;    // guarded by mutex_
    // Resident waiting VMs, least recently parked first; guarded by mutex_.
    std::list<std::shared_ptr<Machine>> idle_lru_;
    // VMs that found every context in use; guarded by mutex_.
    std::deque<std::shared_ptr<Machine>> context_waiters_;
    // This engine's KVM contexts alive, in VMs and the pool: what
    // max_resident caps. Each context decrements it when destroyed.
    std::atomic<uint64_t> contexts_{0};
    uint64_t contexts_peak_ = 0;
    uint64_t hibernations_ = 0;
    uint64_t wakes_ = 0;
    uint64_t wake_histogram_[24] = {};
    std::atomic<uint64_t> stored_bytes_{0};  // sum of StoredPages::bytes(); relaxed, statistics
    PageTable page_table_;
    // Background work the workers run when no VM is queued; guarded by mutex_.
    std::deque<std::function<void()>> jobs_;
    // Context releases of VMs that ended off a worker (kill, destroy from
    // JavaScript); workers run them before any VM that finds no pooled
    // context. Guarded by mutex_.
    std::deque<std::function<void()>> releases_;
    // Set while one idle worker polls the queues (acq_rel on the exchange
    // that claims it, release when it stops; nothing else depends on it).
    std::atomic<bool> spinning_{false};
    std::unique_ptr<VcpuState> fresh_;   // state of a never-run vCPU, for reuse; guarded by mutex_
};

uint64_t monotonic_ns();

// Internal status code: no context is free now, but one will come back.
constexpr const char *kContextBusy = "ERR_CONTEXT_BUSY";

// A pooled context unused this long is closed while the pool contains more than
// pool_size, so that an engine whose VMs all hibernated gives back the memory
// (about 0.6 MB each) and descriptors of the contexts they left. Long enough
// that a burst of wakes every few hundred milliseconds keeps its contexts.
constexpr uint64_t kPoolTrimNs = 1000000000;

// True on the engine's worker threads.
extern thread_local bool on_worker_thread;

}  // namespace vmm
