#include "memory/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "vmm_abi.h"

namespace vmm {

GuestMemory::~GuestMemory() { unmap(); }

Status GuestMemory::map(const MemorySource &source, uint64_t ram_size) {
    unmap();
    // MAP_NORESERVE: guest RAM is committed page by page as the guest touches
    // it, so a 16 MiB VM that uses 40 KiB costs 40 KiB.
    void *base = mmap(nullptr, ram_size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        return Status::from_errno("ERR_OUT_OF_MEMORY",
                                  format("mmap of %llu bytes of guest RAM failed: %s",
                                         static_cast<unsigned long long>(ram_size),
                                         std::strerror(err)),
                                  err, "mmap");
    }
    base_ = static_cast<uint8_t *>(base);
    size_ = ram_size;
    Status status = map_source(source);
    if (!status.ok()) {
        unmap();
    }
    return status;
}

Status GuestMemory::remap(const MemorySource &source) {
    // Fresh anonymous pages over the whole range first: whatever the last
    // guest left above the source's extent must not reach the next one.
    void *anon = mmap(base_, size_, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (anon == MAP_FAILED) {
        int err = errno;
        return Status::from_errno("ERR_OUT_OF_MEMORY",
                                  format("mmap of guest RAM failed: %s", std::strerror(err)), err,
                                  "mmap");
    }
    return map_source(source);
}

Status GuestMemory::map_source(const MemorySource &source) {
    if (source.size == 0) {
        return Status::success();
    }
    // source.size <= size_: the engine maps a source only into RAM of the
    // size it was built for.
    void *mapped = mmap(base_, source.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED,
                        source.fd, static_cast<off_t>(source.offset));
    if (mapped == MAP_FAILED) {
        int err = errno;
        return Status::from_errno("ERR_OUT_OF_MEMORY",
                                  format("mmap of the guest memory source failed: %s",
                                         std::strerror(err)),
                                  err, "mmap");
    }
    return Status::success();
}

void GuestMemory::unmap() {
    if (base_ != nullptr) {
        munmap(base_, size_);
        base_ = nullptr;
        size_ = 0;
    }
}

void GuestMemory::drop_range(uint64_t first, uint64_t count) {
    if (first < size_ / VMM_PAGE_SIZE && count <= size_ / VMM_PAGE_SIZE - first) {
        madvise(base_ + first * VMM_PAGE_SIZE, count * VMM_PAGE_SIZE, MADV_DONTNEED);
    }
}

Status GuestMemory::restore_pages(const PageBitmap &pages, const MemorySource &source) {
    uint8_t original[VMM_PAGE_SIZE];
    const uint64_t count = size_ / VMM_PAGE_SIZE;
    for (uint64_t page = 0; page < count; page++) {
        if (!pages.test(page)) {
            continue;
        }
        uint8_t *host = base_ + page * VMM_PAGE_SIZE;
        const uint64_t offset = page * VMM_PAGE_SIZE;
        if (source.present.test(page) && offset < source.size) {
            ssize_t n = pread(source.fd, original, VMM_PAGE_SIZE,
                              static_cast<off_t>(source.offset + offset));
            if (n != static_cast<ssize_t>(VMM_PAGE_SIZE)) {
                return Status::from_errno("ERR_OUT_OF_MEMORY", "reading a source page failed",
                                          n < 0 ? errno : EIO, "pread");
            }
        } else {
            std::memset(original, 0, VMM_PAGE_SIZE);
        }
        // Comparing first keeps a page that was only read (the shared zero
        // page, say) from being copied into a private page for nothing.
        if (std::memcmp(host, original, VMM_PAGE_SIZE) != 0) {
            std::memcpy(host, original, VMM_PAGE_SIZE);
        }
    }
    return Status::success();
}

uint8_t *GuestMemory::user_range(uint64_t gpa, uint64_t len) const {
    if (gpa < VMM_RESERVED_END) {
        return nullptr;
    }
    return any_range(gpa, len);
}

uint8_t *GuestMemory::any_range(uint64_t gpa, uint64_t len) const {
    uint64_t end;
    if (base_ == nullptr || __builtin_add_overflow(gpa, len, &end) || end > size_) {
        return nullptr;
    }
    return base_ + gpa;
}

namespace {

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst): 63 page
// present, 61 file page or shared anonymous page. A MAP_PRIVATE page that was
// written becomes anonymous, so bit 61 tells a page still shared with the
// source from this VM's own copy.
constexpr uint64_t kPagemapPresent = 1ull << 63;
constexpr uint64_t kPagemapFileOrShared = 1ull << 61;

// Entries read per pread of pagemap: 16 MiB of guest RAM in one call, 32 KiB
// of stack.
constexpr uint64_t kPagemapBatch = 4096;

// Returns this process's /proc/self/pagemap, opened once, which saves a
// procfs path walk, permission check and close on every hibernation and
// context release. A forked child opens its own, because the inherited
// descriptor shows the parent's pages.
// Returns -1 with errno set when it cannot be opened.
int pagemap_fd() {
    static std::mutex mutex;
    static int fd = -1;
    static pid_t owner = 0;
    std::lock_guard<std::mutex> lock(mutex);
    pid_t pid = getpid();
    if (fd >= 0 && owner == pid) {
        return fd;
    }
    if (fd >= 0) {
        close(fd);
    }
    fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    owner = pid;
    return fd;
}

}  // namespace

template <typename Visit>
bool GuestMemory::scan_pagemap(Visit visit) const {
    if (base_ == nullptr) {
        return true;
    }
    int fd = pagemap_fd();
    if (fd < 0) {
        return false;
    }
    const uint64_t pages = size_ / VMM_PAGE_SIZE;
    const uint64_t first = reinterpret_cast<uint64_t>(base_) / VMM_PAGE_SIZE;
    uint64_t entries[kPagemapBatch];
    bool ok = true;
    for (uint64_t done = 0; done < pages;) {
        uint64_t batch = pages - done < kPagemapBatch ? pages - done : kPagemapBatch;
        ssize_t n = pread(fd, entries, batch * 8, static_cast<off_t>((first + done) * 8));
        if (n != static_cast<ssize_t>(batch * 8)) {
            ok = false;
            break;
        }
        for (uint64_t i = 0; i < batch; i++) {
            visit(done + i, entries[i]);
        }
        done += batch;
    }
    return ok;
}

uint64_t GuestMemory::private_bytes_in(uint64_t first, uint64_t count) const {
    const uint64_t pages = size_ / VMM_PAGE_SIZE;
    if (base_ == nullptr || first >= pages || count > pages - first) {
        return 0;
    }
    int fd = pagemap_fd();
    if (fd < 0) {
        return 0;
    }
    const uint64_t start = reinterpret_cast<uint64_t>(base_) / VMM_PAGE_SIZE + first;
    uint64_t entries[kPagemapBatch];
    uint64_t bytes = 0;
    for (uint64_t done = 0; done < count;) {
        uint64_t batch = count - done < kPagemapBatch ? count - done : kPagemapBatch;
        ssize_t n = pread(fd, entries, batch * 8, static_cast<off_t>((start + done) * 8));
        if (n != static_cast<ssize_t>(batch * 8)) {
            break;
        }
        for (uint64_t i = 0; i < batch; i++) {
            if ((entries[i] & kPagemapPresent) && !(entries[i] & kPagemapFileOrShared)) {
                bytes += VMM_PAGE_SIZE;
            }
        }
        done += batch;
    }
    return bytes;
}

Status GuestMemory::written_pages(PageBitmap *pages) const {
    bool ok = scan_pagemap([pages](uint64_t page, uint64_t entry) {
        if ((entry & kPagemapPresent) && !(entry & kPagemapFileOrShared)) {
            pages->set(page);
        }
    });
    if (!ok) {
        return Status::from_errno("ERR_OUT_OF_MEMORY", "reading /proc/self/pagemap failed",
                                  errno, "pread");
    }
    return Status::success();
}

bool GuestMemory::resident_bytes(uint64_t *private_bytes, uint64_t *shared_bytes) const {
    *private_bytes = 0;
    *shared_bytes = 0;
    return scan_pagemap([&](uint64_t, uint64_t entry) {
        if ((entry & kPagemapPresent) == 0) {
            return;
        }
        if (entry & kPagemapFileOrShared) {
            *shared_bytes += VMM_PAGE_SIZE;
        } else {
            *private_bytes += VMM_PAGE_SIZE;
        }
    });
}

}  // namespace vmm
