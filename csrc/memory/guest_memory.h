// Host mapping of one VM's guest RAM and the single bounds check through
// which every guest-supplied address passes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace vmm {

class Image;
struct ImageLayout;

class GuestMemory {
public:
    GuestMemory() = default;
    ~GuestMemory();
    GuestMemory(const GuestMemory &) = delete;
    GuestMemory &operator=(const GuestMemory &) = delete;

    // Maps `ram_size` bytes: the image layout MAP_PRIVATE over its extent
    // (pages stay shared with every other VM of the image until written) and
    // anonymous zero pages above it. Codes: ERR_OUT_OF_MEMORY.
    Status map(const ImageLayout &layout, uint64_t ram_size);
    void unmap();

    uint8_t *host() const { return base_; }
    uint64_t size() const { return size_; }

    // Returns the host address of guest [gpa, gpa + len) when that range lies
    // in guest RAM at or above VMM_RESERVED_END, else nullptr. This is the
    // check for every address a guest passes to the VMM: the range cannot
    // wrap, reach past RAM or touch the VMM's reserved area.
    uint8_t *user_range(uint64_t gpa, uint64_t len) const;

    // Same check for ranges the VMM itself reads in its reserved area (the
    // exception frame on the supervisor stack): [gpa, gpa + len) inside RAM.
    uint8_t *any_range(uint64_t gpa, uint64_t len) const;

    // Counts resident pages: `private_bytes` holds pages only this VM maps
    // (written copies and anonymous pages), `shared_bytes` pages still shared
    // with the image. Reads /proc/self/pagemap; returns false when it cannot.
    bool resident_bytes(uint64_t *private_bytes, uint64_t *shared_bytes) const;

private:
    uint8_t *base_ = nullptr;
    uint64_t size_ = 0;
};

}  // namespace vmm
