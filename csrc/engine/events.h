// Events the engine hands to JavaScript. Workers push them, and the addon is
// notified when the queue becomes non-empty. It drains the queue in one batch
// on the main thread, so a burst of replies costs one main-thread wakeup.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "common/status.h"
#include "engine/machine.h"

namespace vmm {

enum class EventType : uint8_t {
    kStarted,      // the VM's KVM context is ready and it runs
    kStartFailed,  // building the KVM context failed; `error` gives the reason
    kConsole,      // the VM has console bytes; take them with Engine::take_console
    kReply,        // reply to call `call_id`, bytes in `data`
    kCallFailed,   // call `call_id` failed; `error` gives the reason
    kExit,         // the VM ended; `exit` describes how
    kSnapshot,     // snapshot request `call_id` finished; the result is in `snapshot`
    kSnapshotFailed,  // snapshot request `call_id` failed; `error` gives the reason
    kPrewarmed,       // prewarm request `call_id` finished
    kPrewarmFailed,   // prewarm request `call_id` failed; `error` gives the reason
};

struct Event {
    EventType type;
    uint64_t vm_id = 0;
    uint64_t call_id = 0;
    std::vector<uint8_t> data;
    std::shared_ptr<const ExitInfo> exit;
    std::shared_ptr<const Snapshot> snapshot;
    Status error;
};

class EventQueue {
public:
    // `notify` runs on the pushing thread when the queue goes from empty to
    // non-empty; it must only schedule the drain.
    explicit EventQueue(std::function<void()> notify) : notify_(std::move(notify)) {}

    void push(Event event) {
        bool was_empty;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            was_empty = events_.empty();
            events_.push_back(std::move(event));
        }
        if (was_empty && notify_) {
            notify_();
        }
    }

    // Pushes a kStarted event for `vm_id` when `started_pending` is set, and
    // clears the flag, then `event` unless it is null, in one step so that one
    // drain takes both. The flag changes under the queue's lock, so that an
    // event another thread pushes for the VM cannot get ahead of its kStarted.
    void push_after_started(std::atomic<bool> &started_pending, uint64_t vm_id, Event *event) {
        // Every wait and reply passes here. Once the flag is clear, kStarted
        // is already in the queue, ahead of anything pushed from now on.
        if (!started_pending.load(std::memory_order_acquire)) {
            if (event != nullptr) {
                push(std::move(*event));
            }
            return;
        }
        bool was_empty;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            was_empty = events_.empty();
            const size_t before = events_.size();
            if (started_pending.exchange(false, std::memory_order_acq_rel)) {
                Event started;
                started.type = EventType::kStarted;
                started.vm_id = vm_id;
                events_.push_back(std::move(started));
            }
            if (event != nullptr) {
                events_.push_back(std::move(*event));
            }
            if (events_.size() == before) {
                return;
            }
        }
        if (was_empty && notify_) {
            notify_();
        }
    }

    std::vector<Event> drain() {
        std::lock_guard<std::mutex> lock(mutex_);
        std::vector<Event> out;
        out.swap(events_);
        return out;
    }

private:
    std::function<void()> notify_;
    std::mutex mutex_;
    std::vector<Event> events_;
};

}  // namespace vmm
