#include "engine/engine.h"

#include <signal.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
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

Status destroyed_error(uint64_t vm_id) {
    return Status::failure("ERR_VM_DESTROYED",
                           format("VM %llu was destroyed", static_cast<unsigned long long>(vm_id)));
}

Status not_started_error(uint64_t vm_id) {
    return Status::failure("ERR_VM_NOT_STARTED",
                           format("VM %llu is not started: call start() first",
                                  static_cast<unsigned long long>(vm_id)));
}

Status exited_error(uint64_t vm_id) {
    return Status::failure("ERR_VM_EXITED",
                           format("VM %llu has exited", static_cast<unsigned long long>(vm_id)));
}

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

}  // namespace

thread_local bool on_worker_thread = false;

static uint64_t default_max_resident(uint64_t open_files, unsigned workers) {
    // 32 contexts per worker thread, and at most 256. Only `workers` VMs run
    // at once, and a resident waiting VM only saves a wake (about 0.15 ms)
    // when it is called again before it hibernates. But every resident KVM
    // VM registers an MMU notifier that slows each VM creation and
    // copy-on-write fault in the process: a clone's start took 0.24 ms with
    // 100 resident and 0.54 ms with 1,000 on the 2-vCPU kvm_pvm test host.
    // There, 100,000 clones got their first call at about 10,000 per second
    // with 64 contexts and 8,700 with 256 (bench/density).
    uint64_t limit = 32ull * workers;
    limit = limit < 256 ? limit : 256;

    // About 640 KiB of host memory per resident context, in kernel structures
    // and shadow page tables (bench/resident measures it). The contexts get at
    // most a quarter of the memory available now.
    uint64_t available_kib = 0;
    if (FILE *meminfo = fopen("/proc/meminfo", "re")) {
        char line[128];
        while (fgets(line, sizeof(line), meminfo) != nullptr) {
            unsigned long long kib;
            if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) {
                available_kib = kib;
                break;
            }
        }
        fclose(meminfo);
    }

    uint64_t by_memory = available_kib / 4 / 640;
    uint64_t by_files = open_files > 256 ? (open_files - 256) / 2 : 16;
    limit = by_memory > 0 && by_memory < limit ? by_memory : limit;
    limit = by_files < limit ? by_files : limit;
    return limit < 4 ? 4 : limit;
}

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
    case VmState::kHibernated: return "hibernated";
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
    // Each resident VM uses two descriptors (VM and vCPU), so the soft limit
    // goes up to the hard one and the context cap stays below it.
    rlimit files{};
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
        getrlimit(RLIMIT_NOFILE, &files);
    }
    if (options_.max_resident == 0) {
        options_.max_resident = default_max_resident(files.rlim_cur, options_.workers);
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
        jobs_.clear();
        releases_.clear();
        while (!timers_.empty()) {
            timers_.pop();
        }
        for (auto &entry : machines) {
            entry.second->kvm.reset();
            entry.second->memory.reset();
            entry.second->state = VmState::kExited;
            entry.second->stored.release(page_table_);
        }
        pool_.clear();
        idle_lru_.clear();
        context_waiters_.clear();
    }
}

uint64_t Engine::create(std::shared_ptr<Image> image, uint64_t ram_size, std::string cmdline) {
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t id = next_id_++;
    machines_.emplace(id, std::make_shared<Machine>(id, std::move(image), nullptr, ram_size,
                                                    std::move(cmdline)));
    return id;
}

uint64_t Engine::create_clone(std::shared_ptr<const Snapshot> snapshot) {
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t id = next_id_++;
    uint64_t ram_size = snapshot->ram_size();
    machines_.emplace(id, std::make_shared<Machine>(id, nullptr, std::move(snapshot), ram_size,
                                                    std::string()));
    return id;
}

Status Engine::snapshot(uint64_t vm_id, uint64_t request_id) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::shared_ptr<Machine> m;
    Status status = find_live_locked(vm_id, &m);
    if (!status.ok()) {
        return status;
    }
    m->snapshot_requests.push_back(request_id);
    switch (m->state) {
    case VmState::kWaiting:
    case VmState::kHibernated:
        // A worker takes the capture (waking a hibernated VM first) and
        // parks the VM again.
        make_runnable_locked(m);
        break;
    case VmState::kRunning:
        m->pause_requested.store(true, std::memory_order_release);
        kick_locked(*m);
        break;
    default:
        // Queued: the worker that runs it next captures first.
        break;
    }
    return Status::success();
}

Status Engine::set_balloon(uint64_t vm_id, uint64_t pages) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::shared_ptr<Machine> m = find_locked(vm_id);
    if (!m) {
        return destroyed_error(vm_id);
    }
    if (m->state == VmState::kExited) {
        return exited_error(vm_id);
    }
    if (pages > m->ram_size / VMM_PAGE_SIZE) {
        return Status::failure("ERR_BALLOON_TARGET", "the balloon target is larger than guest RAM");
    }
    // Before start() a target is recorded even when it equals the current
    // one, because a clone replaces the current one with its snapshot's.
    if (m->balloon.set_target(pages) || m->state == VmState::kCreated) {
        m->balloon_wake = true;
        if (m->state == VmState::kWaiting || m->state == VmState::kHibernated) {
            make_runnable_locked(m);
        }
    }
    return Status::success();
}

Status Engine::balloon_stats(uint64_t vm_id, BalloonStats *out) {
    std::shared_ptr<Machine> m;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        m = find_locked(vm_id);
    }
    if (!m) {
        return destroyed_error(vm_id);
    }
    *out = m->balloon.stats();
    return Status::success();
}

EngineStats Engine::engine_stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    EngineStats out;
    out.vms = machines_.size();
    out.pooled_contexts = pool_.size();
    out.resident_contexts = contexts_.load(std::memory_order_relaxed);
    out.max_resident = options_.max_resident;
    out.max_resident_reached = contexts_peak_;
    out.page_store_bytes = page_table_.bytes() + stored_bytes_.load(std::memory_order_relaxed);
    out.hibernations = hibernations_;
    out.wakes = wakes_;
    for (int i = 0; i < 24; i++) {
        out.wake_histogram[i] = wake_histogram_[i];
    }

    for (auto &entry : machines_) {
        Machine &m = *entry.second;
        switch (m.state) {
        case VmState::kCreated: out.created++; break;
        case VmState::kStarting:
        case VmState::kRunnable:
        case VmState::kRunning: out.running++; break;
        case VmState::kWaiting: out.waiting++; break;
        case VmState::kHibernated: out.hibernated++; break;
        case VmState::kExited: out.exited++; break;
        }
        if (m.memory) {
            uint64_t private_bytes = 0;
            uint64_t shared_bytes = 0;
            m.memory->resident_bytes(&private_bytes, &shared_bytes);
            out.private_bytes += private_bytes;
            out.shared_bytes += shared_bytes;
        }
    }
    return out;
}

std::shared_ptr<Machine> Engine::find_locked(uint64_t vm_id) {
    auto it = machines_.find(vm_id);
    return it == machines_.end() ? nullptr : it->second;
}

Status Engine::find_live_locked(uint64_t vm_id, std::shared_ptr<Machine> *out) {
    *out = find_locked(vm_id);
    if (!*out) {
        return destroyed_error(vm_id);
    }
    if ((*out)->state == VmState::kCreated) {
        return not_started_error(vm_id);
    }
    if ((*out)->state == VmState::kExited) {
        return exited_error(vm_id);
    }
    return Status::success();
}

Status Engine::start(uint64_t vm_id, std::vector<Message> first) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
        return Status::failure("ERR_VMM_CLOSED", "the VMM is closed");
    }
    std::shared_ptr<Machine> m = find_locked(vm_id);
    if (!m) {
        return destroyed_error(vm_id);
    }
    if (m->state == VmState::kExited && !m->start_requested) {
        return exited_error(vm_id);  // killed before it was ever started
    }
    if (m->state != VmState::kCreated) {
        return Status::failure("ERR_VM_ALREADY_STARTED",
                               format("VM %llu was already started",
                                      static_cast<unsigned long long>(vm_id)));
    }
    for (Message &message : first) {
        m->inbox.push_back(std::move(message));
        m->counters.calls.fetch_add(1, std::memory_order_relaxed);
    }
    m->start_requested = true;
    m->state = VmState::kStarting;
    run_queue_.push_back(m);
    queue_length_.store(run_queue_.size(), std::memory_order_release);
    wake_worker_locked();
    return Status::success();
}

Status Engine::call(uint64_t vm_id, uint64_t call_id, std::vector<uint8_t> data) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::shared_ptr<Machine> m;
    Status status = find_live_locked(vm_id, &m);
    if (!status.ok()) {
        return status;
    }
    m->inbox.push_back(Message{call_id, std::move(data)});
    m->counters.calls.fetch_add(1, std::memory_order_relaxed);
    if (m->state == VmState::kWaiting || m->state == VmState::kHibernated) {
        make_runnable_locked(m);
    }
    return Status::success();
}

void Engine::make_runnable_locked(const std::shared_ptr<Machine> &m) {
    lru_remove_locked(*m);
    m->state = VmState::kRunnable;
    run_queue_.push_back(m);
    queue_length_.store(run_queue_.size(), std::memory_order_release);
    wake_worker_locked();
}

void Engine::wake_worker_locked() {
    // A polling worker takes the only queued VM within microseconds, and it
    // checks the queue under mutex_ before it sleeps. Waking a second worker
    // too would cost a futex call here and a thread that competes with
    // Node's main thread for the cores.
    if (run_queue_.size() == 1 && spinning_.load(std::memory_order_acquire)) {
        return;
    }
    work_cv_.notify_one();
}

Status Engine::kill(uint64_t vm_id) {
    std::shared_ptr<Machine> finished;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        std::shared_ptr<Machine> m = find_locked(vm_id);
        if (!m) {
            return destroyed_error(vm_id);
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
            // Not on a worker: no vCPU runs, so it can end here. Claimed
            // as running before the lock drops, so that no worker picks it
            // (to evict, say) before finish() below. A copy in the run
            // queue is skipped by the worker that pops it.
            lru_remove_locked(*m);
            m->state = VmState::kRunning;
            m->worker = -1;
            finished = m;
            break;
        }
    }
    if (finished) {
        finish(finished, ExitInfo::killed());
    }
    return Status::success();
}

void Engine::destroy(uint64_t vm_id) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (std::shared_ptr<Machine> m = find_locked(vm_id)) {
            m->destroyed.store(true, std::memory_order_release);
        }
    }
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
        return destroyed_error(vm_id);
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
    } else if (m->state == VmState::kHibernated && m->has_stored_state) {
        // No worker owns a hibernated VM, so `stored` does not change here. Pages
        // stored once for many VMs (the page table) are not counted.
        out->private_bytes = m->stored.bytes() + m->cpu_runs.capacity();
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
        if (!m || m->wait_seq != timer.seq) {
            continue;
        }
        if (timer.idle) {
            if (m->state == VmState::kWaiting && m->kvm) {
                m->hibernate_requested = true;
                make_runnable_locked(m);
            }
        } else if (m->state == VmState::kWaiting || m->state == VmState::kHibernated) {
            m->wait_timed_out = true;
            make_runnable_locked(m);
        }
    }
}

bool Engine::complete_wait_locked(Machine &m) {
    GuestMemory &memory = *m.memory;
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
    } else if (m.balloon_wake) {
        m.balloon_wake = false;
        ret = -VMM_EINTR;
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

    on_worker_thread = true;
    std::unique_lock<std::mutex> lock(mutex_);
    bool spun = false;
    for (;;) {
        if (stopping_) {
            return;
        }
        fire_timers_locked(monotonic_ns());
        bool expected = false;
        if (run_queue_.empty() && releases_.empty() && !spun && options_.spin_us > 0 &&
            spinning_.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) {
            // Poll briefly before sleeping: a call usually follows a reply
            // within microseconds, and waking a sleeping thread costs tens
            // of microseconds on a virtualized host. One worker at a time,
            // so that idle workers do not take every core from Node's main
            // thread. A release does not end the poll: its notify wakes
            // another worker, and a VM that starts right after another ends
            // (a clone replacing the one destroyed) should not wait for it.
            spun = true;
            lock.unlock();
            uint64_t until = monotonic_ns() + options_.spin_us * 1000;
            while (queue_length_.load(std::memory_order_acquire) == 0 && monotonic_ns() < until) {
                __builtin_ia32_pause();
            }
            spinning_.store(false, std::memory_order_release);
            lock.lock();
            continue;
        }
        if (!releases_.empty() && (run_queue_.empty() || pool_.empty())) {
            // Before a queued VM only when no pooled context is free: that
            // VM may want this one. Otherwise the VM goes first, because a
            // release (completing the pending exit, reading the vCPU state,
            // scanning and restoring pages) is tens of microseconds.
            std::function<void()> release = std::move(releases_.front());
            releases_.pop_front();
            lock.unlock();
            release();
            lock.lock();
            continue;
        }
        if (run_queue_.empty() && pool_.size() < options_.workers && !idle_lru_.empty() &&
            contexts_.load(std::memory_order_relaxed) >= options_.max_resident) {
            // At the cap with no free context: hibernate the least recently
            // parked VM now, while this worker is idle, so that the next wake
            // finds a context instead of hibernating one itself.
            lock.unlock();
            evict_one();
            lock.lock();
            continue;
        }
        if (run_queue_.empty() && !jobs_.empty()) {
            std::function<void()> job = std::move(jobs_.front());
            jobs_.pop_front();
            lock.unlock();
            job();
            lock.lock();
            continue;
        }
        if (run_queue_.empty()) {
            uint64_t now = monotonic_ns();
            uint64_t next_trim = 0;
            PooledContext stale;
            if (take_stale_pooled_locked(now, &stale, &next_trim)) {
                lock.unlock();
                stale = PooledContext();  // closes its VM, vCPU and RAM mapping
                lock.lock();
                // A VM that found no context at the cap while this one was
                // being closed waits for a retry: its slot is free now.
                retry_context_waiter_locked();
                continue;
            }
            uint64_t next = timers_.empty() ? 0 : timers_.top().deadline_ns;
            if (next_trim != 0 && (next == 0 || next_trim < next)) {
                next = next_trim;
            }
            if (next == 0) {
                work_cv_.wait(lock);
            } else if (next > now) {
                work_cv_.wait_for(lock, std::chrono::nanoseconds(next - now));
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

}  // namespace vmm
