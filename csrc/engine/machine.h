// The engine's record of one VM: its configuration, scheduling state,
// mailbox, console buffer and counters.
#pragma once

#include <linux/kvm.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "devices/balloon.h"
#include "kvm/context.h"
#include "memory/guest_memory.h"
#include "memory/image.h"
#include "memory/page_store.h"
#include "memory/snapshot.h"

namespace vmm {

enum class VmState : uint8_t {
    kCreated,   // not started
    kStarting,  // queued for its first run (the worker builds its KVM context)
    kRunnable,  // queued for a worker
    kRunning,   // on a worker, inside or around KVM_RUN
    kWaiting,   // blocked in VMM_HC_WAIT; holds no thread
    kHibernated,  // waiting without a KVM context: its state is in the page store
    kExited,    // ended; its KVM context and memory are released
};

const char *vm_state_name(VmState state);

// The end of a VM. `reason` is one of "exit", "crash", "fault", "killed".
struct ExitInfo {
    int code = 0;
    std::string reason;
    std::string message;
    std::string exit_name;  // KVM exit reason, for crashes
    bool has_exception = false;
    uint64_t vector = 0;
    uint64_t error_code = 0;
    uint64_t rip = 0;
    uint64_t cr2 = 0;
    bool has_regs = false;
    kvm_regs regs{};

    // An end by kill(), destroy() or close().
    static ExitInfo killed() {
        ExitInfo info;
        info.reason = "killed";
        info.code = -1;
        info.message = "killed by the host";
        return info;
    }
    // A crash outside the guest's own code (a failed start, wake or
    // hibernation), with `message` saying what failed.
    static ExitInfo failure(std::string message) {
        ExitInfo info;
        info.reason = "crash";
        info.code = -1;
        info.message = std::move(message);
        return info;
    }
};

struct Message {
    uint64_t call_id;
    std::vector<uint8_t> data;
};

// Console bytes not yet taken by JavaScript. Bounded: a guest that writes
// faster than Node drains loses the excess, counted in `dropped`, and its
// vCPU never blocks.
struct ConsoleBuffer {
    static constexpr size_t kCapacity = 64 * 1024;
    std::mutex mutex;
    std::string pending;
    bool queued = false;  // an event for this buffer is in the event queue
    uint64_t written = 0;
    uint64_t dropped = 0;
};

struct MachineCounters {
    // Relaxed atomics: statistics only, read from the main thread while a
    // worker updates them; no other memory depends on their values.
    std::atomic<uint64_t> exits{0};
    std::atomic<uint64_t> hypercalls{0};
    std::atomic<uint64_t> hypercall_errors{0};  // calls that returned a negative value
    std::atomic<uint64_t> calls{0};
    std::atomic<uint64_t> replies{0};
    std::atomic<uint64_t> run_ns{0};
};

struct Machine {
    Machine(uint64_t id, std::shared_ptr<Image> image, std::shared_ptr<const Snapshot> snapshot,
            uint64_t ram_size, std::string cmdline)
        : id(id),
          image(std::move(image)),
          snapshot(std::move(snapshot)),
          ram_size(ram_size),
          cmdline(std::move(cmdline)) {}

    const uint64_t id;
    const std::shared_ptr<Image> image;              // set for a VM booted from an image
    const std::shared_ptr<const Snapshot> snapshot;  // set for a clone
    const uint64_t ram_size;
    const std::string cmdline;

    // Guarded by Engine::mutex_.
    VmState state = VmState::kCreated;
    std::list<Message> inbox;  // a list: an empty std::deque allocates about 600 bytes
    uint64_t awaiting_reply = 0;  // call id of the message the guest holds, 0 = none
    bool in_wait = false;         // stopped inside VMM_HC_WAIT
    bool wait_timed_out = false;
    uint64_t wait_block = 0;      // guest address of the waiting hypercall's block
    uint64_t wait_buf = 0;        // message buffer, checked when the wait began
    uint64_t wait_cap = 0;
    uint64_t wait_deadline = 0;   // CLOCK_MONOTONIC ns, 0 = none
    uint64_t wait_seq = 0;        // distinguishes a stale deadline timer from the current one
    int worker = -1;              // index of the worker running it, while kRunning
    uint64_t slice_start_ns = 0;
    std::unique_ptr<KvmContext> kvm;
    std::unique_ptr<GuestMemory> memory;
    std::shared_ptr<const MemorySource> source;  // what `memory` maps, once booted
    std::shared_ptr<const Snapshot> restored_from;  // see Engine::PooledContext
    // Pages written since `source` was mapped, by the guest or the VMM,
    // gathered by Engine::collect_dirty.
    PageBitmap dirty;
    // The vCPU stopped on a hypercall exit that KVM has not completed yet;
    // KvmContext::complete_pending_io must run before its state is read.
    bool io_pending = false;
    // Booted, kStarted not emitted yet. Set by the worker; cleared under
    // the event queue's lock by whichever thread emits the event
    // (EventQueue::push_after_started), so it goes out once and first.
    std::atomic<bool> started_pending{false};
    bool start_requested = false;  // Engine::start() accepted it; guarded by Engine::mutex_
    std::vector<uint64_t> snapshot_requests;  // request ids waiting for a capture
    bool balloon_wake = false;  // the balloon target changed; end the next wait with -EINTR

    // Hibernation. Guarded by Engine::mutex_, except `stored`, which only
    // the worker that owns the VM (hibernating or waking it) touches.
    bool hibernate_requested = false;  // idle too long: give the context back
    bool has_stored_state = false;     // `stored` and `cpu_runs` hold the VM
    StoredPages stored;                // pages that differ from the source
    std::vector<uint8_t> cpu_runs;     // vCPU state, encoded against the base state
    uint64_t parked_ns = 0;            // when it last began to wait
    bool in_lru = false;               // listed in Engine::idle_lru_
    std::list<std::shared_ptr<Machine>>::iterator lru_it;
    std::shared_ptr<ExitInfo> exit;

    // Set from any thread, read by the worker after KVM_RUN returns. Release
    // on store and acquire on load, so that the worker that reads the flag
    // also reads the state written before it.
    std::atomic<bool> kill_requested{false};
    // destroy() was called: JavaScript no longer listens to this VM, so its
    // end emits no kStarted, kConsole or kExit event.
    std::atomic<bool> destroyed{false};
    std::atomic<bool> preempt_requested{false};
    std::atomic<bool> pause_requested{false};  // stop for a snapshot, then continue

    ConsoleBuffer console;
    MachineCounters counters;
    Balloon balloon;  // has its own lock
};

}  // namespace vmm
