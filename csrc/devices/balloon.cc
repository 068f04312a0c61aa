#include "devices/balloon.h"

#include "vmm_abi.h"

namespace vmm {

void Balloon::reset(uint64_t ram_pages) {
    std::lock_guard<std::mutex> lock(mutex_);
    pages_ = PageBitmap(ram_pages);
    target_pages_ = 0;
    reclaimed_bytes_ = 0;
    reported_free_bytes_ = 0;
    invalid_frames_ = 0;
}

bool Balloon::set_target(uint64_t pages) {
    std::lock_guard<std::mutex> lock(mutex_);
    bool changed = pages != target_pages_;
    target_pages_ = pages;
    return changed;
}

uint64_t Balloon::target() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return target_pages_;
}

void Balloon::drop_run(GuestMemory &memory, uint64_t first, uint64_t count) {
    reclaimed_bytes_ += memory.private_bytes_in(first, count);
    memory.drop_range(first, count);
}

uint64_t Balloon::inflate(GuestMemory &memory, const uint64_t *frames, uint64_t count) {
    std::lock_guard<std::mutex> lock(mutex_);
    const uint64_t first_frame = VMM_RESERVED_END / VMM_PAGE_SIZE;
    uint64_t added = 0;
    uint64_t run_start = 0;
    uint64_t run_length = 0;
    for (uint64_t i = 0; i < count; i++) {
        // Frame numbers are full 64-bit values from the guest: compare them
        // with the page count, never multiply them into addresses first.
        uint64_t frame = frames[i];
        if (frame >= pages_.pages() || frame < first_frame) {
            invalid_frames_++;
            continue;
        }
        if (pages_.test(frame)) {
            continue;
        }
        pages_.set(frame);
        added++;
        if (run_length > 0 && frame == run_start + run_length) {
            run_length++;
            continue;
        }
        if (run_length > 0) {
            drop_run(memory, run_start, run_length);
        }
        run_start = frame;
        run_length = 1;
    }
    if (run_length > 0) {
        drop_run(memory, run_start, run_length);
    }
    return added;
}

uint64_t Balloon::deflate(const uint64_t *frames, uint64_t count) {
    std::lock_guard<std::mutex> lock(mutex_);
    const uint64_t first_frame = VMM_RESERVED_END / VMM_PAGE_SIZE;
    uint64_t removed = 0;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t frame = frames[i];
        if (frame >= pages_.pages() || frame < first_frame) {
            invalid_frames_++;  // counted as inflate counts them
        } else if (pages_.test(frame)) {
            pages_.clear(frame);
            removed++;
        }
    }
    return removed;
}

uint64_t Balloon::report_free(GuestMemory &memory, uint64_t gpa, uint64_t len) {
    // Only pages wholly inside the range: the guest may use the bytes
    // around it.
    uint64_t first = (gpa + VMM_PAGE_SIZE - 1) / VMM_PAGE_SIZE;
    uint64_t end = (gpa + len) / VMM_PAGE_SIZE;
    if (end <= first) {
        return 0;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    drop_run(memory, first, end - first);
    reported_free_bytes_ += (end - first) * VMM_PAGE_SIZE;
    return end - first;
}

BalloonStats Balloon::stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    BalloonStats out;
    out.target_bytes = target_pages_ * VMM_PAGE_SIZE;
    // At most the RAM size: the bitmap has one bit per page of RAM.
    out.actual_bytes = pages_.count() * VMM_PAGE_SIZE;
    out.reclaimed_bytes = reclaimed_bytes_;
    out.reported_free_bytes = reported_free_bytes_;
    out.invalid_frames = invalid_frames_;
    return out;
}

PageBitmap Balloon::pages() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return pages_;
}

void Balloon::assign(const PageBitmap &pages, uint64_t target_pages) {
    std::lock_guard<std::mutex> lock(mutex_);
    pages_ = pages;
    target_pages_ = target_pages;
}

}  // namespace vmm
