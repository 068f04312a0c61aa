// The memory balloon and free page reporting: pages a guest hands back are
// dropped with MADV_DONTNEED, so their private copies disappear and each
// page falls back to its image or snapshot content, or to zero.
#pragma once

#include <cstdint>
#include <mutex>

#include "memory/guest_memory.h"
#include "memory/source.h"

namespace vmm {

struct BalloonStats {
    uint64_t target_bytes = 0;
    uint64_t actual_bytes = 0;         // pages in the balloon
    uint64_t reclaimed_bytes = 0;      // private pages dropped by inflate and free reports
    uint64_t reported_free_bytes = 0;  // pages dropped by free range reports
    uint64_t invalid_frames = 0;       // frames outside RAM or in the reserved area
};

class Balloon {
public:
    void reset(uint64_t ram_pages);

    // Sets the target. Returns true when it changed, so the guest must be notified.
    bool set_target(uint64_t pages);
    uint64_t target() const;

    // Adds the frames in `frames[0, count)` to the balloon and drops their
    // pages. Frames outside [VMM_RESERVED_END, RAM) are ignored and counted;
    // a frame already in the balloon counts once. Returns frames added.
    uint64_t inflate(GuestMemory &memory, const uint64_t *frames, uint64_t count);

    // Removes frames from the balloon. Returns frames removed.
    uint64_t deflate(const uint64_t *frames, uint64_t count);

    // Drops the whole pages inside [gpa, gpa + len), which the guest reports
    // free. The range has been checked by GuestMemory::user_range.
    uint64_t report_free(GuestMemory &memory, uint64_t gpa, uint64_t len);

    BalloonStats stats() const;
    // Copy of the pages in the balloon, which snapshots leave out.
    PageBitmap pages() const;
    // Restores a balloon carried by a snapshot into a clone.
    void assign(const PageBitmap &pages, uint64_t target_pages);

private:
    // Drops one run of pages and adds the private ones to reclaimed_bytes_.
    void drop_run(GuestMemory &memory, uint64_t first, uint64_t count);

    mutable std::mutex mutex_;
    PageBitmap pages_;
    uint64_t target_pages_ = 0;
    uint64_t reclaimed_bytes_ = 0;
    uint64_t reported_free_bytes_ = 0;
    uint64_t invalid_frames_ = 0;
};

}  // namespace vmm
