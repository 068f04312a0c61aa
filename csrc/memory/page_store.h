// Compact storage for the state of hibernated VMs: the pages that differ
// from their base (image or snapshot) and the vCPU state, encoded against
// what the VM started from.
//
// A page equal to its base is not stored, a zero page is a tag, a page with
// few changed bytes is a list of byte runs against the base page, and any
// other page goes to a table shared by all VMs of the engine, where
// identical pages are stored once.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "memory/source.h"

namespace vmm {

// Encodes `current` against `base` (both `size` bytes) as runs of changed
// bytes: u32 offset, u32 length, then the bytes. Empty when equal.
std::vector<uint8_t> encode_runs(const uint8_t *base, const uint8_t *current, size_t size);

// Applies runs from encode_runs() onto `out` (`size` bytes). Returns false
// if the encoding is malformed or reaches past `size`.
bool apply_runs(const std::vector<uint8_t> &runs, uint8_t *out, size_t size);

// Full pages shared by every hibernated VM of one engine, stored once each.
class PageTable {
public:
    // Stores a copy of `page` (or finds an identical one) and returns its
    // reference, whose count it increments.
    uint32_t acquire(const uint8_t *page);
    void release(uint32_t ref);
    const uint8_t *data(uint32_t ref) const;
    // Bytes held: pages stored, each counted once.
    uint64_t bytes() const;

private:
    struct Entry {
        std::unique_ptr<uint8_t[]> data;
        uint64_t hash = 0;
        uint32_t refs = 0;
    };
    mutable std::mutex mutex_;
    std::vector<Entry> entries_;
    std::vector<uint32_t> free_;
    std::unordered_multimap<uint64_t, uint32_t> by_hash_;
    uint64_t stored_ = 0;
};

// The pages of one hibernated VM.
class StoredPages {
public:
    StoredPages() = default;
    StoredPages(StoredPages &&) = default;
    StoredPages &operator=(StoredPages &&) = default;

    // Adds page `page` with content `current`, encoded against `base`.
    void add(PageTable &table, uint64_t page, const uint8_t *base, const uint8_t *current);

    // Writes every stored page into `memory` (guest RAM of the VM's size,
    // mapping the same source). Returns false on a malformed record.
    bool restore(const PageTable &table, uint8_t *memory, uint64_t ram_size) const;

    // Drops the references into `table`.
    void release(PageTable &table);

    // Bytes this VM's records take, not counting shared pages.
    uint64_t bytes() const { return records_.capacity() + refs_.capacity() * sizeof(uint32_t); }
    bool empty() const { return records_.empty(); }

private:
    // Records: u32 page, u8 kind, then for kind kRuns a u32 length and the
    // runs, for kind kShared a u32 reference.
    std::vector<uint8_t> records_;
    std::vector<uint32_t> refs_;
};

}  // namespace vmm
