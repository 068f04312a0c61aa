// Host mapping of one VM's guest RAM and the single bounds check through
// which every guest-supplied address passes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "memory/source.h"

namespace vmm {

class GuestMemory {
public:
    GuestMemory() = default;
    ~GuestMemory();
    GuestMemory(const GuestMemory &) = delete;
    GuestMemory &operator=(const GuestMemory &) = delete;

    // Maps `ram_size` bytes: `source` MAP_PRIVATE over its extent (pages stay
    // shared with every other VM of the source until written) and zero pages
    // above it. Codes: ERR_OUT_OF_MEMORY.
    Status map(const MemorySource &source, uint64_t ram_size);

    // Replaces the contents of an existing mapping of the same size with
    // `source`, keeping the host address, so a KVM memory slot that points
    // here stays valid. Codes: ERR_OUT_OF_MEMORY.
    Status remap(const MemorySource &source);

    // Drops pages [first, first + count); the caller checked the range.
    void drop_range(uint64_t first, uint64_t count);

    // Bytes of private pages among [first, first + count), from pagemap.
    uint64_t private_bytes_in(uint64_t first, uint64_t count) const;

    // Copies the source's content back into the pages marked in `pages`,
    // writing only pages that differ. The pages stay private and mapped, so
    // KVM keeps its mappings of them: the next guest of this source does not
    // fault on them again, which dropping them would cause. Measured on the
    // kvm_pvm host: a clone's first run took about 230 us after dropping
    // its predecessor's five written pages. Codes: ERR_OUT_OF_MEMORY.
    Status restore_pages(const PageBitmap &pages, const MemorySource &source);

    void unmap();

    uint8_t *host() const { return base_; }
    uint64_t size() const { return size_; }

    // Returns the host address of guest [gpa, gpa + len) when that range lies
    // in guest RAM at or above VMM_RESERVED_END, else nullptr. This is the
    // check for every address a guest passes to the VMM: the range cannot
    // wrap, reach past RAM or touch the VMM's reserved area.
    uint8_t *user_range(uint64_t gpa, uint64_t len) const;

    // Same check for ranges the VMM itself uses in its reserved area (the
    // exception frame, the boot information page): [gpa, gpa + len) in RAM.
    uint8_t *any_range(uint64_t gpa, uint64_t len) const;

    // Marks in `pages` every page this VM has a private copy of: pages the
    // guest or the VMM wrote (a written MAP_PRIVATE page becomes anonymous)
    // and anonymous pages above the source. Reads /proc/self/pagemap, which
    // reflects KVM's writes and the VMM's alike and costs nothing while the
    // guest runs, unlike KVM's dirty log, whose write protection added about
    // 110 us to a clone's first run here (bench/clone, kvm_pvm host).
    Status written_pages(PageBitmap *pages) const;

    // Counts resident pages: `private_bytes` counts pages only this VM maps
    // (written copies and anonymous pages), `shared_bytes` pages still shared
    // with the source. Reads /proc/self/pagemap; returns false when it cannot.
    bool resident_bytes(uint64_t *private_bytes, uint64_t *shared_bytes) const;

private:
    Status map_source(const MemorySource &source);
    // Calls visit(page, entry) for each pagemap entry of the mapping.
    template <typename Visit>
    bool scan_pagemap(Visit visit) const;

    uint8_t *base_ = nullptr;
    uint64_t size_ = 0;
};

}  // namespace vmm
