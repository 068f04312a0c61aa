// Memory that VMs map MAP_PRIVATE at guest physical address 0: an image
// layout or a snapshot. Immutable once built; every VM mapping it shares its
// pages until it writes to them.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "common/status.h"
#include "vmm_abi.h"

namespace vmm {

// Bitmap of guest pages, one bit per 4 KiB page. Its words are allocated on
// the first set(), so an empty bitmap of a large RAM costs nothing.
class PageBitmap {
public:
    PageBitmap() = default;
    explicit PageBitmap(uint64_t pages) : pages_(pages) {}

    uint64_t pages() const { return pages_; }
    bool test(uint64_t page) const {
        return page < pages_ && !words_.empty() && (words_[page / 64] >> (page % 64)) & 1;
    }
    void set(uint64_t page) {
        if (page < pages_) {
            allocate();
            words_[page / 64] |= 1ull << (page % 64);
        }
    }
    void clear(uint64_t page) {
        if (page < pages_ && !words_.empty()) {
            words_[page / 64] &= ~(1ull << (page % 64));
        }
    }
    // Marks every page that [gpa, gpa + len) touches; len 0 marks nothing.
    void set_range(uint64_t gpa, uint64_t len) {
        if (len == 0) {
            return;
        }
        uint64_t last = (gpa + len - 1) / VMM_PAGE_SIZE;
        for (uint64_t page = gpa / VMM_PAGE_SIZE; page <= last && page < pages_; page++) {
            set(page);
        }
    }
    void clear_all() { std::fill(words_.begin(), words_.end(), 0); }
    void merge(const PageBitmap &other) {
        if (!other.words_.empty()) {
            allocate();
        }
        for (size_t i = 0; i < words_.size() && i < other.words_.size(); i++) {
            words_[i] |= other.words_[i];
        }
    }
    uint64_t count() const {
        uint64_t n = 0;
        for (uint64_t word : words_) {
            n += static_cast<uint64_t>(__builtin_popcountll(word));
        }
        return n;
    }
    // The words, allocated: callers that write them directly need all.
    std::vector<uint64_t> &words() {
        allocate();
        return words_;
    }

private:
    void allocate() {
        if (words_.empty() && pages_ > 0) {
            words_.assign((pages_ + 63) / 64, 0);
        }
    }

    uint64_t pages_ = 0;
    std::vector<uint64_t> words_;
};

struct MemorySource {
    MemorySource() : id(next_id()) {}
    ~MemorySource() {
        if (fd >= 0) {
            close(fd);
        }
    }
    MemorySource(const MemorySource &) = delete;
    MemorySource &operator=(const MemorySource &) = delete;

    // Identity for pooled contexts: a context whose RAM already maps this
    // source only needs the pages its last guest wrote copied back.
    const uint64_t id;
    int fd = -1;
    uint64_t offset = 0;    // file offset of guest physical 0
    uint64_t size = 0;      // bytes mapped from the file; above that, zero pages
    uint64_t ram_size = 0;  // guest RAM size this source was built for
    PageBitmap present;     // pages whose content is not all zero
    // A snapshot file, which unlike a sealed memfd can shrink under the
    // mapping; see check_size().
    bool file = false;

    // Fails when a snapshot file no longer covers `size` bytes from `offset`.
    // The VMM's own accesses past a truncated end would raise SIGBUS in the
    // whole process, so boots and wakes check first.
    // NOTE: a truncation after this check still raises SIGBUS.
    Status check_size() const {
        struct stat st {};
        if (!file) {
            return Status::success();
        }
        if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < offset ||
            static_cast<uint64_t>(st.st_size) - offset < size) {
            return Status::failure("ERR_SNAPSHOT_INVALID",
                                   "the snapshot file was truncated while loaded; replace "
                                   "snapshot files with a rename, never in place");
        }
        return Status::success();
    }

private:
    static uint64_t next_id() {
        // Relaxed: only uniqueness matters.
        static std::atomic<uint64_t> counter{1};
        return counter.fetch_add(1, std::memory_order_relaxed);
    }
};

// True when the 4 KiB page at `page` is all zero bytes.
bool page_is_zero(const uint8_t *page);

}  // namespace vmm
