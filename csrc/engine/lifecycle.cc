// A VM's life on a worker: boot (from an image or a snapshot, into a pooled
// or new KVM context), snapshot capture, and the end that returns its
// context to the pool.
#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "devices/hypercalls.h"
#include "engine/engine.h"
#include "vmm_abi.h"

namespace vmm {

namespace {

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

bool Engine::take_pooled_locked(uint64_t ram_size, uint64_t source_id, PooledContext *out) {
    size_t pick = pool_.size();
    for (size_t i = 0; i < pool_.size(); i++) {
        if (pool_[i].memory->size() != ram_size) {
            continue;
        }
        pick = i;
        if (pool_[i].source->id == source_id) {
            break;  // best case: its RAM already maps this source
        }
    }
    if (pick == pool_.size()) {
        return false;
    }
    *out = std::move(pool_[pick]);
    pool_.erase(pool_.begin() + static_cast<std::ptrdiff_t>(pick));
    return true;
}

bool Engine::take_stale_pooled_locked(uint64_t now_ns, PooledContext *out, uint64_t *next_ns) {
    *next_ns = 0;
    if (pool_.size() <= options_.pool_size) {
        return false;
    }
    size_t oldest = pool_.size();
    for (size_t i = 0; i < pool_.size(); i++) {
        if (!pool_[i].prewarmed && (oldest == pool_.size() || pool_[i].pooled_ns < pool_[oldest].pooled_ns)) {
            oldest = i;
        }
    }
    if (oldest == pool_.size()) {
        return false;
    }
    uint64_t due = pool_[oldest].pooled_ns + kPoolTrimNs;
    if (now_ns < due) {
        *next_ns = due;
        return false;
    }
    *out = std::move(pool_[oldest]);
    pool_.erase(pool_.begin() + static_cast<std::ptrdiff_t>(oldest));
    return true;
}

Status Engine::point_at_source(const std::shared_ptr<const MemorySource> &source,
                               PooledContext *ctx) {
    if (ctx->source->id == source->id) {
        return Status::success();
    }
    Status status = ctx->memory->remap(*source);
    if (status.ok()) {
        ctx->source = source;
        ctx->restored_from = nullptr;
    }
    return status;
}

Status Engine::acquire_context(uint64_t ram_size, const std::shared_ptr<const MemorySource> &source,
                               PooledContext *out) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        take_pooled_locked(ram_size, source->id, out);
    }
    if (out->kvm) {
        return point_at_source(source, out);
    }

    // At the cap, hibernate the least recently parked VM and take its
    // context; a pooled context of another RAM size is freed to make room.
    while (contexts_.load(std::memory_order_relaxed) >= options_.max_resident) {
        PooledContext surplus;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!take_pooled_locked(ram_size, source->id, out) && !pool_.empty()) {
                surplus = std::move(pool_.back());
                pool_.pop_back();
            }
        }
        if (out->kvm) {
            return point_at_source(source, out);
        }
        if (surplus.kvm) {
            continue;  // freed at the end of this iteration; the count drops
        }
        if (!evict_one()) {
            // Every context is in use by a VM that runs or is about to:
            // the caller queues this VM until one comes back.
            return Status::failure(kContextBusy, "no KVM context is free");
        }
    }

    auto memory = std::make_unique<GuestMemory>();
    Status status = memory->map(*source, ram_size);
    if (!status.ok()) {
        return status;
    }
    std::unique_ptr<KvmContext> ctx;
    status = KvmContext::create(*kvm_, &ctx, &contexts_);
    if (!status.ok()) {
        return status;
    }
    {
        // The first vCPU ever created gives the state a reused vCPU is reset
        // to, so nothing of an earlier guest (FPU, SSE, MSRs) reaches the next.
        std::lock_guard<std::mutex> lock(mutex_);
        if (!fresh_) {
            auto fresh = std::make_unique<VcpuState>();
            status = fresh->capture(*kvm_, ctx->vcpu_fd());
            if (!status.ok()) {
                return status;
            }
            fresh_ = std::move(fresh);
        }
    }
    status = ctx->map_ram(memory->host(), ram_size);
    if (!status.ok()) {
        return status;
    }
    out->kvm = std::move(ctx);
    out->memory = std::move(memory);
    out->source = source;
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t live = contexts_.load(std::memory_order_relaxed);
    contexts_peak_ = live > contexts_peak_ ? live : contexts_peak_;
    return Status::success();
}

void Engine::release_context(Machine &m, std::unique_ptr<KvmContext> kvm,
                             std::unique_ptr<GuestMemory> memory, bool crashed) {
    if (!kvm || !memory || !m.source) {
        return;
    }
    bool keep;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        keep = !stopping_ && (pool_.size() < options_.pool_size || !context_waiters_.empty());
    }
    // A context that is not kept, or cannot be cleaned, is freed. Its slot
    // under the cap is then free for a VM waiting for one.
    auto free_context = [&] {
        kvm.reset();
        memory.reset();
        std::lock_guard<std::mutex> lock(mutex_);
        retry_context_waiter_locked();
    };
    if (!keep) {
        free_context();
        return;
    }
    // An exit KVM has not completed (the last hypercall, or an exception
    // stub's port write) would be completed by the next KVM_RUN, which then
    // writes that old instruction's end into the next guest's rip. The same
    // KVM_RUN returns the segment registers, compared below.
    kvm_regs regs{};
    kvm_sregs sregs{};
    if (!kvm->complete_pending_io_and_read(&regs, &sregs).ok()) {
        free_context();
        return;
    }
    // Copy the source back into every page the guest or the VMM wrote, so
    // no byte of this guest reaches the next one. A failed pagemap read or
    // copy leaves unknown pages behind: free the context instead.
    PageBitmap written(memory->size() / VMM_PAGE_SIZE);
    if (!memory->written_pages(&written).ok() || !memory->restore_pages(written, *m.source).ok()) {
        free_context();
        return;
    }
    kvm->clear_exit_request();
    // A crash ran the exception stub in supervisor mode, which may leave
    // state restore_user_state() does not cover: such a context gets a full
    // restore next time.
    PooledContext pooled{std::move(kvm), std::move(memory), m.source,
                         crashed ? nullptr : m.restored_from, {}};
    if (pooled.restored_from) {
        const VcpuState &base = pooled.restored_from->cpu();
        pooled.match.sregs = std::memcmp(&sregs.cs, &base.sregs.cs, sizeof(kvm_segment) * 6) == 0;
        // Read here, off the next clone's path, so that its start can skip
        // KVM_SET_XSAVE when the area still equals the snapshot's.
        VcpuState current = base;
        pooled.match.xsave =
            current.capture_xsave(pooled.kvm->vcpu_fd()).ok() && current.xsave == base.xsave;
    }
    bool returned_to_pool = false;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!stopping_ && (pool_.size() < options_.pool_size || !context_waiters_.empty())) {
            pooled.pooled_ns = monotonic_ns();
            pool_.push_back(std::move(pooled));
            returned_to_pool = true;
        }
    }
    if (!returned_to_pool) {
        // Closed before the retry below, so that the waiter finds the
        // context count under the cap.
        pooled = PooledContext();
    }
    // A context came back to the pool, or its slot under the cap is free.
    std::lock_guard<std::mutex> lock(mutex_);
    retry_context_waiter_locked();
}

Status Engine::collect_dirty(Machine &m) {
    return m.memory->written_pages(&m.dirty);
}

Status Engine::boot_machine(Machine &m) {
    std::shared_ptr<const MemorySource> source;
    if (m.snapshot) {
        source = m.snapshot->memory();
    } else {
        Status status = m.image->layout(m.ram_size, &source);
        if (!status.ok()) {
            return status;
        }
    }
    Status status = source->check_size();
    if (!status.ok()) {
        return status;
    }
    PooledContext ctx;
    status = acquire_context(m.ram_size, source, &ctx);
    if (!status.ok()) {
        return status;
    }
    // Pages the previous guest wrote were restored when its context was
    // released. They stay private, so written_pages() reports them for this
    // guest too: its written set can hold pages equal to the source.
    m.dirty = PageBitmap(m.ram_size / VMM_PAGE_SIZE);
    // A target set before start() (balloon_wake set) survives the reset;
    // a clone otherwise inherits its snapshot's balloon.
    const uint64_t requested_target = m.balloon.target();
    const bool target_requested = m.balloon_wake;
    m.balloon.reset(m.ram_size / VMM_PAGE_SIZE);
    // Every snapshot, also one loaded from a file, carries a balloon bitmap
    // of its RAM size. The size check keeps a default-constructed bitmap out.
    if (m.snapshot && m.snapshot->balloon_pages().pages() > 0) {
        m.balloon.assign(m.snapshot->balloon_pages(), m.snapshot->balloon_target());
        // Taken after a new target but before the guest acted on it: the
        // clone's first wait must tell the guest.
        if (m.snapshot->balloon_target() * VMM_PAGE_SIZE != m.balloon.stats().actual_bytes) {
            m.balloon_wake = true;
        }
    }
    if (target_requested) {
        m.balloon.set_target(requested_target);
    }

    uint8_t *info_page = ctx.memory->any_range(VMM_BOOT_INFO_ADDR, sizeof(vmm_boot_info));
    if (info_page == nullptr) {
        return Status::failure("ERR_OUT_OF_MEMORY", "guest RAM is too small for the boot page");
    }
    auto *info = reinterpret_cast<vmm_boot_info *>(info_page);
    if (m.snapshot) {
        // A clone keeps the snapshot's boot page (command line included) but
        // gets its own identity before it runs.
        if (ctx.restored_from == m.snapshot) {
            status = m.snapshot->cpu().restore_user_state(ctx.kvm->vcpu_fd(), ctx.match);
            if (status.ok()) {
                status = ctx.kvm->set_regs_fast(m.snapshot->cpu().regs);
            }
        } else {
            status = m.snapshot->cpu().restore(ctx.kvm->vcpu_fd());
        }
        if (!status.ok()) {
            return status;
        }
        m.restored_from = m.snapshot;
        info->vm_id = m.id;
        info->random_seed = random_u64();
        const WaitState &wait = m.snapshot->wait();
        m.in_wait = wait.in_wait;
        m.wait_block = wait.block;
        m.wait_buf = wait.buf;
        m.wait_cap = wait.cap;
        m.wait_deadline =
            wait.deadline_remaining_ns == 0 ? 0 : monotonic_ns() + wait.deadline_remaining_ns;
        m.wait_timed_out = false;
    } else {
        vmm_boot_info fresh_info{};
        fresh_info.magic = VMM_BOOT_MAGIC;
        fresh_info.abi_version = VMM_ABI_VERSION;
        fresh_info.ram_size = m.ram_size;
        fresh_info.vm_id = m.id;
        fresh_info.random_seed = random_u64();
        // The addon rejects longer command lines; this keeps the NUL regardless.
        size_t len = m.cmdline.size() < VMM_CMDLINE_MAX ? m.cmdline.size() : VMM_CMDLINE_MAX - 1;
        fresh_info.cmdline_len = static_cast<uint32_t>(len);
        std::memcpy(fresh_info.cmdline, m.cmdline.data(), len);
        std::memcpy(info_page, &fresh_info, sizeof(fresh_info));
        if (fresh_) {
            // fresh_ is written once, before any context is pooled.
            status = fresh_->restore(ctx.kvm->vcpu_fd());
            if (!status.ok()) {
                return status;
            }
        }
        status = ctx.kvm->set_entry_state(m.image->entry(), m.ram_size);
        if (!status.ok()) {
            return status;
        }
    }

    std::lock_guard<std::mutex> lock(mutex_);
    m.memory = std::move(ctx.memory);
    m.kvm = std::move(ctx.kvm);
    m.source = std::move(ctx.source);
    m.io_pending = false;
    // A kill that arrived during the boot found no context to kick; the
    // kill_requested flag covers it, so set immediate_exit here as well.
    if (m.kill_requested.load(std::memory_order_acquire)) {
        m.kvm->request_exit();
    }
    return Status::success();
}

Status Engine::prewarm(std::shared_ptr<const Snapshot> snapshot, uint64_t count,
                       uint64_t request_id) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
        return Status::failure("ERR_VMM_CLOSED", "the VMM is closed");
    }
    struct Progress {
        std::mutex mutex;
        uint64_t remaining;
        Status status;
    };
    auto progress = std::make_shared<Progress>();
    progress->remaining = count;
    if (count == 0) {
        Event event;
        event.type = EventType::kPrewarmed;
        event.call_id = request_id;
        events_.push(std::move(event));
        return Status::success();
    }
    for (uint64_t i = 0; i < count; i++) {
        jobs_.push_back([this, snapshot, progress, request_id] {
            Status status = prewarm_one(snapshot);
            std::lock_guard<std::mutex> guard(progress->mutex);
            if (!status.ok() && progress->status.ok()) {
                progress->status = status;
            }
            if (--progress->remaining == 0) {
                Event event;
                event.call_id = request_id;
                event.type = progress->status.ok() ? EventType::kPrewarmed
                                                   : EventType::kPrewarmFailed;
                event.error = progress->status;
                events_.push(std::move(event));
            }
        });
    }
    work_cv_.notify_all();
    return Status::success();
}

void Engine::handle_snapshot_requests(const std::shared_ptr<Machine> &m) {
    std::vector<uint64_t> requests;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        requests.swap(m->snapshot_requests);
    }
    if (requests.empty()) {
        return;
    }
    Machine &vm = *m;
    std::shared_ptr<const Snapshot> snapshot;
    Status status;
    if (vm.io_pending) {
        status = vm.kvm->complete_pending_io();
        vm.io_pending = !status.ok();
    }
    if (status.ok()) {
        status = collect_dirty(vm);
    }
    VcpuState cpu;
    if (status.ok()) {
        status = cpu.capture(*kvm_, vm.kvm->vcpu_fd());
    }
    if (status.ok()) {
        WaitState wait;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            wait.in_wait = vm.in_wait;
            wait.block = vm.wait_block;
            wait.buf = vm.wait_buf;
            wait.cap = vm.wait_cap;
            uint64_t now = monotonic_ns();
            wait.deadline_remaining_ns =
                vm.wait_deadline == 0 ? 0 : (vm.wait_deadline > now ? vm.wait_deadline - now : 1);
        }
        status = Snapshot::capture(*vm.memory, vm.source, vm.dirty, std::move(cpu), wait,
                                   vm.snapshot, vm.balloon.pages(), vm.balloon.target(),
                                   &snapshot);
    }
    for (uint64_t request : requests) {
        Event event;
        event.vm_id = vm.id;
        event.call_id = request;
        if (status.ok()) {
            event.type = EventType::kSnapshot;
            event.snapshot = snapshot;
        } else {
            event.type = EventType::kSnapshotFailed;
            event.error = status;
        }
        // A VM started with calls queued has not sent kStarted yet, and a
        // snapshot must not settle before start() does.
        push_after_started(vm, std::move(event));
    }
}

void Engine::wait_for_context(const std::shared_ptr<Machine> &m, VmState state) {
    std::lock_guard<std::mutex> lock(mutex_);
    m->worker = -1;
    if (m->kill_requested.load(std::memory_order_acquire)) {
        // kill() saw it running and left the end to this worker.
        m->state = VmState::kRunnable;
        run_queue_.push_back(m);
        queue_length_.store(run_queue_.size(), std::memory_order_release);
        work_cv_.notify_one();
        return;
    }
    m->state = state;
    context_waiters_.push_back(m);
    // A context may have come back between the failed attempt and now,
    // with no waiter listed to take it.
    if (!pool_.empty() || contexts_.load(std::memory_order_relaxed) < options_.max_resident ||
        !idle_lru_.empty()) {
        retry_context_waiter_locked();
    }
}

void Engine::retry_context_waiter_locked() {
    while (!context_waiters_.empty()) {
        std::shared_ptr<Machine> m = std::move(context_waiters_.front());
        context_waiters_.pop_front();
        if (m->state == VmState::kStarting || m->state == VmState::kRunnable) {
            run_queue_.push_back(m);
            queue_length_.store(run_queue_.size(), std::memory_order_release);
            work_cv_.notify_one();
            return;
        }
    }
}

void Engine::reject_inbox(const std::shared_ptr<Machine> &m, const Status &status) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Message &message : m->inbox) {
        Event event;
        event.type = EventType::kCallFailed;
        event.vm_id = m->id;
        event.call_id = message.call_id;
        event.error = status;
        events_.push(std::move(event));
    }
    m->inbox.clear();
    m->worker = -1;
    m->state = VmState::kHibernated;
}

void Engine::park_locked(const std::shared_ptr<Machine> &m) {
    m->parked_ns = monotonic_ns();
    lru_add_locked(m);
    retry_context_waiter_locked();
    if (options_.idle_ms > 0) {
        Timer timer{m->parked_ns + options_.idle_ms * 1000000ull, m->wait_seq, m};
        timer.idle = true;
        timers_.push(timer);
        work_cv_.notify_one();
    }
}

void Engine::push_started_locked(Machine &m) {
    events_.push_after_started(m.started_pending, m.id, nullptr);
}

void Engine::push_after_started(Machine &m, Event event) {
    events_.push_after_started(m.started_pending, m.id, &event);
}

void Engine::run_machine(const std::shared_ptr<Machine> &m, bool boot) {
    if (boot) {
        Status status = boot_machine(*m);
        if (status.code == kContextBusy) {
            wait_for_context(m, VmState::kStarting);
            return;
        }
        if (!status.ok()) {
            Event event;
            event.type = EventType::kStartFailed;
            event.vm_id = m->id;
            event.error = status;
            events_.push(std::move(event));
            finish(m, ExitInfo::failure("start failed: " + status.message));
            return;
        }
        // With a message already queued, kStarted goes out with the VM's
        // first event (see run_vcpu), so that a clone's start and its first
        // reply reach JavaScript in one batch.
        std::lock_guard<std::mutex> lock(mutex_);
        m->started_pending.store(true, std::memory_order_release);
        if (m->inbox.empty()) {
            push_started_locked(*m);
        }
    }
    bool hibernate_now = false;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        hibernate_now = m->hibernate_requested && m->inbox.empty() &&
                        m->snapshot_requests.empty() && !m->balloon_wake && m->kvm;
        m->hibernate_requested = false;
    }
    if (hibernate_now) {
        // After a successful hibernate() another worker may already own the
        // VM (a message woke it), so only its own report of a kill counts.
        bool killed = false;
        Status status = hibernate(m, &killed);
        if (!status.ok()) {
            finish(m, ExitInfo::failure("hibernation failed: " + status.message));
        } else if (killed) {
            finish(m, ExitInfo::killed());
        }
        return;
    }
    if (!boot && m->has_stored_state) {
        Status status = wake(*m);
        if (status.code == kContextBusy) {
            wait_for_context(m, VmState::kRunnable);
            return;
        }
        if (status.code == "ERR_RESOURCE_LIMIT") {
            // Out of file descriptors or memory for a new context: the VM
            // stays hibernated and its queued calls fail with the reason.
            reject_inbox(m, status);
            return;
        }
        if (!status.ok()) {
            finish(m, ExitInfo::failure("waking from hibernation failed: " + status.message));
            return;
        }
    }
    handle_snapshot_requests(m);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (m->in_wait && !complete_wait_locked(*m)) {
            // Woken for a snapshot, or a clone that starts inside its wait:
            // nothing to deliver yet, so it waits again without running.
            if (!m->kill_requested.load(std::memory_order_acquire)) {
                push_started_locked(*m);
                m->state = VmState::kWaiting;
                m->worker = -1;
                park_locked(m);
                if (m->wait_deadline != 0) {
                    timers_.push(Timer{m->wait_deadline, m->wait_seq, m});
                    work_cv_.notify_one();
                }
                if (!m->snapshot_requests.empty()) {
                    make_runnable_locked(m);
                }
                return;
            }
        }
    }
    run_vcpu(m);
}

void Engine::finish(const std::shared_ptr<Machine> &m, ExitInfo info) {
    std::unique_ptr<KvmContext> kvm;
    std::unique_ptr<GuestMemory> memory;
    std::vector<uint64_t> snapshot_requests;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (m->state == VmState::kExited) {
            return;
        }
        m->state = VmState::kExited;
        m->worker = -1;
        lru_remove_locked(*m);
        if (m->has_stored_state) {
            stored_bytes_.fetch_sub(m->stored.bytes() + m->cpu_runs.capacity(),
                                    std::memory_order_relaxed);
            m->stored.release(page_table_);
            m->cpu_runs = std::vector<uint8_t>();
            m->has_stored_state = false;
        }
        m->inbox.clear();
        m->awaiting_reply = 0;
        m->exit = std::make_shared<ExitInfo>(info);
        snapshot_requests.swap(m->snapshot_requests);
        kvm = std::move(m->kvm);
        memory = std::move(m->memory);
    }
    // A destroyed VM's events would only wake JavaScript to be dropped.
    const bool silent = m->destroyed.load(std::memory_order_acquire);
    if (!silent) {
        std::lock_guard<std::mutex> lock(mutex_);
        push_started_locked(*m);
    }
    for (uint64_t request : snapshot_requests) {
        Event event;
        event.type = EventType::kSnapshotFailed;
        event.vm_id = m->id;
        event.call_id = request;
        event.error = Status::failure("ERR_VM_EXITED", "the VM exited before the snapshot");
        events_.push(std::move(event));
    }
    const bool crashed = info.reason == "crash";
    if (!silent) {
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
    }
    // Outside the engine lock: restoring pages and freeing contexts take
    // time. Off a worker (a kill or destroy from JavaScript), a worker does
    // it, so the main thread returns at once.
    if (on_worker_thread || !kvm) {
        release_context(*m, std::move(kvm), std::move(memory), crashed);
        return;
    }
    // std::function needs a copyable callable, so the owners travel in a
    // shared pair.
    auto parts = std::make_shared<std::pair<std::unique_ptr<KvmContext>, std::unique_ptr<GuestMemory>>>(
        std::move(kvm), std::move(memory));
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
        return;  // `parts` frees both here
    }
    releases_.push_back([this, m, parts, crashed] {
        release_context(*m, std::move(parts->first), std::move(parts->second), crashed);
    });
    work_cv_.notify_one();
}

}  // namespace vmm
