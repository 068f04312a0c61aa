#include "engine/engine.h"

#include <signal.h>
#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "devices/hypercalls.h"
#include "kvm/exit.h"
#include "kvm/x86_layout.h"
#include "vmm_abi.h"

namespace vmm {

namespace {

// Signal that interrupts KVM_RUN on a worker. Its handler does nothing: the
// delivery alone makes KVM_RUN return EINTR. A real-time signal, because
// Node uses SIGUSR1 for the inspector and applications may use SIGUSR2.
int kick_signal() { return SIGRTMIN + 6; }

void on_kick(int) {}

void install_kick_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction action{};
        action.sa_handler = on_kick;
        sigemptyset(&action.sa_mask);
        // No SA_RESTART: the point of the signal is to make KVM_RUN return.
        action.sa_flags = 0;
        sigaction(kick_signal(), &action, nullptr);
    });
}

uint64_t random_u64() {
    uint64_t value = 0;
    while (getrandom(&value, sizeof(value), 0) != static_cast<ssize_t>(sizeof(value))) {
        if (errno != EINTR) {
            break;
        }
    }
    return value;
}

}  // namespace

uint64_t monotonic_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

const char *vm_state_name(VmState state) {
    switch (state) {
    case VmState::kCreated: return "created";
    case VmState::kStarting: return "starting";
    case VmState::kRunnable: return "running";
    case VmState::kRunning: return "running";
    case VmState::kWaiting: return "waiting";
    case VmState::kExited: return "exited";
    }
    return "exited";
}

Engine::Engine(std::shared_ptr<KvmSystem> kvm, EngineOptions options,
               std::function<void()> notify)
    : kvm_(std::move(kvm)), options_(options), events_(std::move(notify)) {
    install_kick_handler();
    if (options_.workers == 0) {
        options_.workers = 1;
    }
    workers_.resize(options_.workers);
    for (unsigned i = 0; i < options_.workers; i++) {
        workers_[i].thread = std::thread([this, i] { worker_main(i); });
        workers_[i].handle = workers_[i].thread.native_handle();
    }
    watchdog_ = std::thread([this] { watchdog_main(); });
}

Engine::~Engine() { shutdown(); }

void Engine::shutdown() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) {
            return;
        }
        stopping_ = true;
        for (auto &entry : machines_) {
            Machine &m = *entry.second;
            m.kill_requested.store(true, std::memory_order_release);
            if (m.state == VmState::kRunning) {
                kick_locked(m);
            }
        }
    }
    work_cv_.notify_all();
    watchdog_cv_.notify_all();
    for (Worker &worker : workers_) {
        if (worker.thread.joinable()) {
            worker.thread.join();
        }
    }
    if (watchdog_.joinable()) {
        watchdog_.join();
    }
    std::unordered_map<uint64_t, std::shared_ptr<Machine>> machines;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        machines.swap(machines_);
        run_queue_.clear();
        while (!timers_.empty()) {
            timers_.pop();
        }
        for (auto &entry : machines) {
            entry.second->kvm.reset();
            entry.second->memory.reset();
            entry.second->state = VmState::kExited;
        }
    }
}

uint64_t Engine::create(std::shared_ptr<Image> image, uint64_t ram_size, std::string cmdline) {
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t id = next_id_++;
    machines_.emplace(id, std::make_shared<Machine>(id, std::move(image), ram_size,
                                                    std::move(cmdline)));
    return id;
}

std::shared_ptr<Machine> Engine::find_locked(uint64_t vm_id) {
    auto it = machines_.find(vm_id);
    return it == machines_.end() ? nullptr : it->second;
}

size_t Engine::vm_count() {
    std::lock_guard<std::mutex> lock(mutex_);
    return machines_.size();
}

Status Engine::start(uint64_t vm_id) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
        return Status::failure("ERR_VMM_CLOSED", "the VMM is closed");
    }
    std::shared_ptr<Machine> m = find_locked(vm_id);
    if (!m) {
        return Status::failure("ERR_VM_DESTROYED", format("VM %llu was destroyed",
                                                          static_cast<unsigned long long>(vm_id)));
    }
    if (m->state != VmState::kCreated) {
        return Status::failure("ERR_VM_ALREADY_STARTED",
                               format("VM %llu was already started",
                                      static_cast<unsigned long long>(vm_id)));
    }
    m->state = VmState::kStarting;
    run_queue_.push_back(m);
    queue_length_.store(run_queue_.size(), std::memory_order_release);
    work_cv_.notify_one();
    return Status::success();
}

Status Engine::call(uint64_t vm_id, uint64_t call_id, std::vector<uint8_t> data) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::shared_ptr<Machine> m = find_locked(vm_id);
    if (!m) {
        return Status::failure("ERR_VM_DESTROYED", format("VM %llu was destroyed",
                                                          static_cast<unsigned long long>(vm_id)));
    }
    if (m->state == VmState::kCreated) {
        return Status::failure("ERR_VM_NOT_STARTED",
                               format("VM %llu is not started: call start() first",
                                      static_cast<unsigned long long>(vm_id)));
    }
    if (m->state == VmState::kExited) {
        return Status::failure("ERR_VM_EXITED", format("VM %llu has exited",
                                                       static_cast<unsigned long long>(vm_id)));
    }
    m->inbox.push_back(Message{call_id, std::move(data)});
    m->counters.calls.fetch_add(1, std::memory_order_relaxed);
    if (m->state == VmState::kWaiting) {
        make_runnable_locked(m);
    }
    return Status::success();
}

void Engine::make_runnable_locked(const std::shared_ptr<Machine> &m) {
    m->state = VmState::kRunnable;
    run_queue_.push_back(m);
    queue_length_.store(run_queue_.size(), std::memory_order_release);
    work_cv_.notify_one();
}

Status Engine::kill(uint64_t vm_id) {
    std::shared_ptr<Machine> finished;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        std::shared_ptr<Machine> m = find_locked(vm_id);
        if (!m) {
            return Status::failure("ERR_VM_DESTROYED",
                                   format("VM %llu was destroyed",
                                          static_cast<unsigned long long>(vm_id)));
        }
        m->kill_requested.store(true, std::memory_order_release);
        switch (m->state) {
        case VmState::kRunning:
            // The worker ends it when KVM_RUN returns; the watchdog repeats
            // the kick until it does.
            kick_locked(*m);
            watchdog_cv_.notify_all();
            break;
        case VmState::kExited:
            break;
        default:
            // Not on a worker: no vCPU runs, so it can end here. A copy in
            // the run queue is skipped by the worker that pops it.
            finished = m;
            break;
        }
    }
    if (finished) {
        ExitInfo info;
        info.reason = "killed";
        info.code = -1;
        info.message = "killed by the host";
        finish(finished, std::move(info));
    }
    return Status::success();
}

void Engine::destroy(uint64_t vm_id) {
    kill(vm_id);
    std::lock_guard<std::mutex> lock(mutex_);
    machines_.erase(vm_id);
}

void Engine::kick_locked(Machine &m) {
    if (m.kvm) {
        m.kvm->request_exit();
    }
    if (m.worker >= 0) {
        pthread_kill(workers_[static_cast<unsigned>(m.worker)].handle, kick_signal());
    }
}

Status Engine::stats(uint64_t vm_id, VmStats *out) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::shared_ptr<Machine> m = find_locked(vm_id);
    if (!m) {
        return Status::failure("ERR_VM_DESTROYED", format("VM %llu was destroyed",
                                                          static_cast<unsigned long long>(vm_id)));
    }
    out->state = m->state;
    out->exits = m->counters.exits.load(std::memory_order_relaxed);
    out->hypercalls = m->counters.hypercalls.load(std::memory_order_relaxed);
    out->hypercall_errors = m->counters.hypercall_errors.load(std::memory_order_relaxed);
    out->calls = m->counters.calls.load(std::memory_order_relaxed);
    out->replies = m->counters.replies.load(std::memory_order_relaxed);
    out->run_ns = m->counters.run_ns.load(std::memory_order_relaxed);
    out->ram_size = m->ram_size;
    {
        std::lock_guard<std::mutex> console_lock(m->console.mutex);
        out->console_bytes = m->console.written;
        out->console_dropped = m->console.dropped;
    }
    out->private_bytes = 0;
    out->shared_bytes = 0;
    // The memory is released only under mutex_, which is held here.
    if (m->memory) {
        m->memory->resident_bytes(&out->private_bytes, &out->shared_bytes);
    }
    return Status::success();
}

bool Engine::state(uint64_t vm_id, VmState *out) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::shared_ptr<Machine> m = find_locked(vm_id);
    if (!m) {
        return false;
    }
    *out = m->state;
    return true;
}

void Engine::take_console(uint64_t vm_id, std::string *out) {
    std::shared_ptr<Machine> m;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        m = find_locked(vm_id);
    }
    out->clear();
    if (!m) {
        return;
    }
    std::lock_guard<std::mutex> lock(m->console.mutex);
    out->swap(m->console.pending);
    m->console.queued = false;
}

void Engine::fire_timers_locked(uint64_t now_ns) {
    while (!timers_.empty() && timers_.top().deadline_ns <= now_ns) {
        Timer timer = timers_.top();
        timers_.pop();
        std::shared_ptr<Machine> m = timer.machine.lock();
        if (m && m->state == VmState::kWaiting && m->wait_seq == timer.seq) {
            m->wait_timed_out = true;
            make_runnable_locked(m);
        }
    }
}

bool Engine::complete_wait_locked(Machine &m) {
    const GuestMemory &memory = *m.memory;
    const uint64_t buf = m.wait_buf;
    const uint64_t cap = m.wait_cap;
    const uint64_t deadline = m.wait_deadline;
    int64_t ret;
    if (!m.inbox.empty()) {
        Message &msg = m.inbox.front();
        uint8_t *dst = memory.user_range(buf, cap);
        if (dst == nullptr) {
            ret = -VMM_EFAULT;
        } else if (msg.data.size() > cap) {
            ret = -VMM_EMSGSIZE;
        } else {
            // dst covers cap >= msg.data.size() bytes of guest RAM.
            std::memcpy(dst, msg.data.data(), msg.data.size());
            ret = static_cast<int64_t>(msg.data.size());
            m.awaiting_reply = msg.call_id;
            m.inbox.pop_front();
        }
    } else if (m.wait_timed_out || (deadline != 0 && monotonic_ns() >= deadline)) {
        ret = -VMM_ETIMEDOUT;
    } else {
        return false;
    }
    write_hypercall_ret(memory, m.wait_block, ret);
    m.in_wait = false;
    m.wait_timed_out = false;
    return true;
}

void Engine::worker_main(unsigned index) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, kick_signal());
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);

    std::unique_lock<std::mutex> lock(mutex_);
    bool spun = false;
    for (;;) {
        if (stopping_) {
            return;
        }
        fire_timers_locked(monotonic_ns());
        if (run_queue_.empty() && !spun && options_.spin_us > 0) {
            // Poll briefly before sleeping: a call usually follows a reply
            // within microseconds, and waking a sleeping thread costs tens
            // of microseconds on a virtualized host.
            spun = true;
            lock.unlock();
            uint64_t until = monotonic_ns() + options_.spin_us * 1000;
            while (queue_length_.load(std::memory_order_acquire) == 0 && monotonic_ns() < until) {
                __builtin_ia32_pause();
            }
            lock.lock();
            continue;
        }
        if (run_queue_.empty()) {
            if (timers_.empty()) {
                work_cv_.wait(lock);
            } else {
                uint64_t now = monotonic_ns();
                uint64_t next = timers_.top().deadline_ns;
                if (next > now) {
                    work_cv_.wait_for(lock, std::chrono::nanoseconds(next - now));
                }
            }
            continue;
        }
        std::shared_ptr<Machine> m = std::move(run_queue_.front());
        run_queue_.pop_front();
        queue_length_.store(run_queue_.size(), std::memory_order_release);
        spun = false;
        if (m->state != VmState::kRunnable && m->state != VmState::kStarting) {
            continue;  // killed or destroyed while queued
        }
        bool boot = m->state == VmState::kStarting;
        m->state = VmState::kRunning;
        m->worker = static_cast<int>(index);
        m->slice_start_ns = monotonic_ns();
        workers_[index].current = m;
        running_++;
        watchdog_cv_.notify_all();
        lock.unlock();

        run_machine(m, boot);

        lock.lock();
        running_--;
        workers_[index].current.reset();
    }
}

Status Engine::boot_machine(Machine &m) {
    const ImageLayout *layout = nullptr;
    Status status = m.image->layout(m.ram_size, &layout);
    if (!status.ok()) {
        return status;
    }
    auto memory = std::make_unique<GuestMemory>();
    status = memory->map(*layout, m.ram_size);
    if (!status.ok()) {
        return status;
    }
    uint8_t *info_page = memory->any_range(VMM_BOOT_INFO_ADDR, sizeof(vmm_boot_info));
    if (info_page == nullptr) {
        return Status::failure("ERR_OUT_OF_MEMORY", "guest RAM is too small for the boot page");
    }
    vmm_boot_info info{};
    info.magic = VMM_BOOT_MAGIC;
    info.abi_version = VMM_ABI_VERSION;
    info.ram_size = m.ram_size;
    info.vm_id = m.id;
    info.random_seed = random_u64();
    // The addon rejects longer command lines; this keeps the NUL regardless.
    size_t len = m.cmdline.size() < VMM_CMDLINE_MAX ? m.cmdline.size() : VMM_CMDLINE_MAX - 1;
    info.cmdline_len = static_cast<uint32_t>(len);
    std::memcpy(info.cmdline, m.cmdline.data(), len);
    std::memcpy(info_page, &info, sizeof(info));

    std::unique_ptr<KvmContext> ctx;
    status = KvmContext::create(*kvm_, &ctx);
    if (!status.ok()) {
        return status;
    }
    status = ctx->map_ram(memory->host(), m.ram_size);
    if (!status.ok()) {
        return status;
    }
    status = ctx->set_entry_state(m.image->entry(), m.ram_size);
    if (!status.ok()) {
        return status;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    m.memory = std::move(memory);
    m.kvm = std::move(ctx);
    // A kill that arrived during the boot found no context to kick; the
    // kill_requested flag covers it, so set immediate_exit here as well.
    if (m.kill_requested.load(std::memory_order_acquire)) {
        m.kvm->request_exit();
    }
    return Status::success();
}

void Engine::run_machine(const std::shared_ptr<Machine> &m, bool boot) {
    if (boot) {
        Status status = boot_machine(*m);
        if (!status.ok()) {
            Event event;
            event.type = EventType::kStartFailed;
            event.vm_id = m->id;
            event.error = status;
            events_.push(std::move(event));
            ExitInfo info;
            info.reason = "crash";
            info.code = -1;
            info.message = "start failed: " + status.message;
            finish(m, std::move(info));
            return;
        }
        Event event;
        event.type = EventType::kStarted;
        event.vm_id = m->id;
        events_.push(std::move(event));
    } else {
        std::lock_guard<std::mutex> lock(mutex_);
        if (m->in_wait) {
            complete_wait_locked(*m);
        }
    }
    run_vcpu(m);
}

void Engine::finish(const std::shared_ptr<Machine> &m, ExitInfo info) {
    std::unique_ptr<KvmContext> kvm;
    std::unique_ptr<GuestMemory> memory;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (m->state == VmState::kExited) {
            return;
        }
        m->state = VmState::kExited;
        m->worker = -1;
        m->inbox.clear();
        m->awaiting_reply = 0;
        m->exit = std::make_shared<ExitInfo>(info);
        kvm = std::move(m->kvm);
        memory = std::move(m->memory);
    }
    {
        std::lock_guard<std::mutex> lock(m->console.mutex);
        if (!m->console.pending.empty() && !m->console.queued) {
            m->console.queued = true;
            Event event;
            event.type = EventType::kConsole;
            event.vm_id = m->id;
            events_.push(std::move(event));
        }
    }
    Event event;
    event.type = EventType::kExit;
    event.vm_id = m->id;
    event.exit = std::make_shared<const ExitInfo>(std::move(info));
    events_.push(std::move(event));
    // kvm and memory are released here, outside the engine lock.
}

}  // namespace vmm
