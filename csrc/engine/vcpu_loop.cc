// The vCPU loop of a worker: KVM_RUN, exit decoding, hypercalls, crashes,
// and the watchdog that preempts long-running guests and repeats kicks.
#include <cerrno>
#include <cstring>

#include "devices/hypercalls.h"
#include "engine/engine.h"
#include "kvm/exit.h"
#include "kvm/x86_layout.h"
#include "vmm_abi.h"

namespace vmm {

// Adapter that gives the hypercall table access to the engine's mailbox.
class HypercallHandler : public HypercallHost {
public:
    HypercallHandler(Engine &engine, std::shared_ptr<Machine> machine)
        : engine_(engine), machine_(std::move(machine)) {}

    void console_write(Machine &m, const uint8_t *data, size_t len) override {
        ConsoleBuffer &console = m.console;
        bool notify = false;
        {
            std::lock_guard<std::mutex> lock(console.mutex);
            size_t room = ConsoleBuffer::kCapacity - console.pending.size();
            size_t take = len < room ? len : room;
            console.pending.append(reinterpret_cast<const char *>(data), take);
            console.written += take;
            console.dropped += len - take;
            if (take > 0 && !console.queued) {
                console.queued = true;
                notify = true;
            }
        }
        if (notify) {
            Event event;
            event.type = EventType::kConsole;
            event.vm_id = m.id;
            engine_.push_after_started(m, std::move(event));
        }
    }

    HypercallOutcome wait(Machine &m, uint64_t block_gpa, uint64_t buf, uint64_t cap,
                          uint64_t deadline) override {
        std::lock_guard<std::mutex> lock(engine_.mutex_);
        engine_.push_started_locked(m);
        if (m.awaiting_reply != 0) {
            Event event;
            event.type = EventType::kCallFailed;
            event.vm_id = m.id;
            event.call_id = m.awaiting_reply;
            event.error = Status::failure(
                "ERR_CALL_UNANSWERED",
                "the guest waited for its next message without replying to this call");
            engine_.events_.push(std::move(event));
            m.awaiting_reply = 0;
        }
        // A kill or snapshot request that arrived while this hypercall ran
        // found the VM running; returning without parking lets the loop see it.
        if (m.kill_requested.load(std::memory_order_acquire)) {
            return HypercallOutcome::kResume;
        }
        m.in_wait = true;
        m.wait_timed_out = false;
        m.wait_block = block_gpa;
        m.wait_buf = buf;
        m.wait_cap = cap;
        m.wait_deadline = deadline;
        m.wait_seq++;
        if (engine_.complete_wait_locked(m)) {
            return HypercallOutcome::kResume;
        }
        if (deadline != 0) {
            engine_.timers_.push(Engine::Timer{deadline, m.wait_seq, machine_});
            // A worker sleeping without a timeout must recompute its sleep.
            engine_.work_cv_.notify_one();
        }
        m.state = VmState::kWaiting;
        m.worker = -1;
        m.io_pending = true;
        engine_.park_locked(machine_);
        if (!m.snapshot_requests.empty()) {
            engine_.make_runnable_locked(machine_);
        }
        return HypercallOutcome::kWait;
    }

    int64_t reply(Machine &m, const uint8_t *data, size_t len) override {
        std::lock_guard<std::mutex> lock(engine_.mutex_);
        if (m.awaiting_reply == 0) {
            return -VMM_EINVAL;
        }
        Event event;
        event.type = EventType::kReply;
        event.vm_id = m.id;
        event.call_id = m.awaiting_reply;
        event.data.assign(data, data + len);
        m.awaiting_reply = 0;
        m.counters.replies.fetch_add(1, std::memory_order_relaxed);
        engine_.push_after_started(m, std::move(event));
        return 0;
    }

private:
    Engine &engine_;
    std::shared_ptr<Machine> machine_;
};

namespace {

ExitInfo crash_info(const Machine &m, const DecodedExit &exit, const char *what) {
    ExitInfo info;
    info.reason = "crash";
    info.code = -1;
    info.exit_name = exit_reason_name(exit.reason);
    if (m.kvm && m.kvm->get_regs(&info.regs).ok()) {
        info.has_regs = true;
        info.rip = info.regs.rip;
    }
    info.message = format("%s (%s at rip 0x%llx)", what, info.exit_name.c_str(),
                          static_cast<unsigned long long>(info.rip));
    return info;
}

// Describes a page fault from its error code. Bit 0 is set when the page was
// present, so its permissions denied the access. Bit 1 marks a write and bit 4
// an instruction fetch.
const char *page_fault_cause(uint64_t error_code) {
    const bool present = (error_code & 0x1) != 0;
    if ((error_code & 0x10) != 0) {
        return present ? "instruction fetch denied by the page's permissions"
                       : "instruction fetch from an unmapped page";
    }
    if ((error_code & 0x2) != 0) {
        return present ? "write denied by the page's permissions" : "write to an unmapped page";
    }
    return present ? "read denied by the page's permissions" : "read of an unmapped page";
}

// Reads the frame an exception stub left on the supervisor stack.
ExitInfo exception_info(const Machine &m, const DecodedExit &exit) {
    ExitInfo info = crash_info(m, exit, "guest exception");
    kvm_sregs sregs{};
    if (!info.has_regs || !m.kvm->get_sregs(&sregs).ok()) {
        return info;
    }
    // The stub's rsp points at: rdx, vector, error code, rip, cs, rflags,
    // rsp, ss. It must lie on the supervisor stack; any_range checks it is
    // in RAM.
    uint64_t rsp = info.regs.rsp;
    const uint64_t frame_size = 8 * 8;
    const uint8_t *frame = m.memory->any_range(rsp, frame_size);
    if (rsp < x86::kStackBottom || rsp + frame_size > x86::kStackTop || frame == nullptr) {
        info.message = format("guest exception with a corrupt stub frame (rsp 0x%llx)",
                              static_cast<unsigned long long>(rsp));
        return info;
    }
    uint64_t words[8];
    std::memcpy(words, frame, sizeof(words));
    info.has_exception = true;
    info.vector = words[1];
    info.error_code = words[2];
    info.rip = words[3];
    info.cr2 = sregs.cr2;
    // Report the guest's own registers at the fault, not the stub's.
    info.regs.rdx = words[0];
    info.regs.rip = words[3];
    info.regs.rflags = words[5];
    info.regs.rsp = words[6];
    const char *name = x86::vector_name(static_cast<unsigned>(info.vector));
    if (info.vector == 14) {
        info.message = format("guest page fault (%s) at rip 0x%llx accessing 0x%llx, "
                              "error code 0x%llx (%s)",
                              name, static_cast<unsigned long long>(info.rip),
                              static_cast<unsigned long long>(info.cr2),
                              static_cast<unsigned long long>(info.error_code),
                              page_fault_cause(info.error_code));
    } else {
        info.message = format("guest exception %s (vector %llu) at rip 0x%llx, error code 0x%llx",
                              name, static_cast<unsigned long long>(info.vector),
                              static_cast<unsigned long long>(info.rip),
                              static_cast<unsigned long long>(info.error_code));
    }
    return info;
}

ExitInfo fault_info(std::string message) {
    ExitInfo info;
    info.reason = "fault";
    info.code = -1;
    info.message = std::move(message);
    return info;
}

}  // namespace

void Engine::run_vcpu(const std::shared_ptr<Machine> &m) {
    HypercallHandler host(*this, m);
    KvmContext &kvm = *m->kvm;
    uint64_t started = monotonic_ns();
    auto account = [&] {
        m->counters.run_ns.fetch_add(monotonic_ns() - started, std::memory_order_relaxed);
    };

    for (;;) {
        if (m->kill_requested.load(std::memory_order_acquire)) {
            account();
            finish(m, ExitInfo::killed());
            return;
        }
        if (m->pause_requested.exchange(false, std::memory_order_acq_rel)) {
            if (!m->kill_requested.load(std::memory_order_acquire) &&
                !m->preempt_requested.load(std::memory_order_acquire)) {
                kvm.clear_exit_request();
            }
            handle_snapshot_requests(m);
            continue;
        }
        if (m->preempt_requested.exchange(false, std::memory_order_acq_rel)) {
            kvm.clear_exit_request();
            std::lock_guard<std::mutex> lock(mutex_);
            if (!m->kill_requested.load(std::memory_order_acquire)) {
                account();
                m->worker = -1;
                make_runnable_locked(m);
                return;
            }
            continue;
        }

        // kStarted goes out with the VM's first event (reply, console
        // output, snapshot, wait or end) rather than after the first exit, so that a
        // clone's start and first reply reach JavaScript in one batch. The
        // watchdog sends it after a slice for a guest that shows nothing.
        int err = kvm.run();
        m->counters.exits.fetch_add(1, std::memory_order_relaxed);
        if (err == EINTR || err == EAGAIN) {
            // A kick (kill or preemption) or a stray signal; the checks at
            // the top of the loop decide. immediate_exit stays set until a
            // request is seen, so clear it only when none is pending.
            if (!m->kill_requested.load(std::memory_order_acquire) &&
                !m->preempt_requested.load(std::memory_order_acquire)) {
                kvm.clear_exit_request();
            }
            continue;
        }
        if (err != 0) {
            account();
            DecodedExit none;
            ExitInfo info = crash_info(*m, none, "KVM_RUN failed");
            info.message = format("KVM_RUN failed: %s", std::strerror(err));
            finish(m, std::move(info));
            return;
        }

        DecodedExit exit = decode_exit(kvm.run_state());
        switch (exit.kind) {
        case ExitKind::kHypercall: {
            HypercallResult result = handle_hypercall(*m, exit.value, host);
            if (result.outcome == HypercallOutcome::kResume) {
                continue;
            }
            account();
            if (result.outcome == HypercallOutcome::kWait) {
                return;  // host.wait() parked the VM
            }
            if (result.outcome == HypercallOutcome::kExit) {
                ExitInfo info;
                info.reason = "exit";
                info.code = result.exit_code;
                info.message = format("exited with code %d", result.exit_code);
                finish(m, std::move(info));
                return;
            }
            finish(m, fault_info(result.message));
            return;
        }
        case ExitKind::kInterrupted:
            continue;
        case ExitKind::kException:
            account();
            finish(m, exception_info(*m, exit));
            return;
        case ExitKind::kBadMmio:
            account();
            finish(m, fault_info(format(
                          "guest %s of %u bytes at unbacked guest physical address 0x%llx",
                          exit.is_write ? "write" : "read", exit.size,
                          static_cast<unsigned long long>(exit.address))));
            return;
        case ExitKind::kBadIo:
            account();
            finish(m, crash_info(*m, exit, "port I/O from the guest"));
            return;
        case ExitKind::kHalt:
            account();
            finish(m, crash_info(*m, exit, "HLT in the guest"));
            return;
        case ExitKind::kShutdown:
            account();
            finish(m, crash_info(*m, exit, "triple fault"));
            return;
        case ExitKind::kInternalError: {
            account();
            ExitInfo info = crash_info(*m, exit, "KVM internal error");
            info.message = format("KVM internal error, suberror %llu, at rip 0x%llx",
                                  static_cast<unsigned long long>(exit.value),
                                  static_cast<unsigned long long>(info.rip));
            finish(m, std::move(info));
            return;
        }
        case ExitKind::kFailEntry: {
            account();
            ExitInfo info = crash_info(*m, exit, "VM entry failed");
            info.message = format("VM entry failed, hardware reason 0x%llx",
                                  static_cast<unsigned long long>(exit.value));
            finish(m, std::move(info));
            return;
        }
        case ExitKind::kUnknown:
            account();
            finish(m, crash_info(*m, exit, "unexpected exit"));
            return;
        }
    }
}

void Engine::watchdog_main() {
    const uint64_t slice_ns = options_.slice_ms * 1000000ull;
    const auto period = std::chrono::milliseconds(options_.slice_ms > 1 ? options_.slice_ms / 2 : 1);
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
        if (running_ == 0) {
            watchdog_cv_.wait(lock);
            continue;
        }
        watchdog_cv_.wait_for(lock, period);
        uint64_t now = monotonic_ns();
        for (Worker &worker : workers_) {
            Machine *m = worker.current.get();
            if (m == nullptr || m->state != VmState::kRunning) {
                continue;
            }
            if (now - m->slice_start_ns >= slice_ns) {
                push_started_locked(*m);
            }
            // Repeat a kill kick until the worker acknowledges it by ending
            // the VM, in case the first signal arrived before KVM_RUN.
            if (m->kill_requested.load(std::memory_order_acquire)) {
                kick_locked(*m);
                continue;
            }
            if (!run_queue_.empty() && now - m->slice_start_ns >= slice_ns) {
                m->preempt_requested.store(true, std::memory_order_release);
                kick_locked(*m);
            }
        }
    }
}

}  // namespace vmm
