#include "memory/snapshot.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/sha256.h"

namespace vmm {

Status create_memfd(const char *name, uint64_t size, int *out) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        int err = errno;
        const char *code = (err == EMFILE || err == ENFILE) ? "ERR_RESOURCE_LIMIT"
                                                            : "ERR_OUT_OF_MEMORY";
        return Status::from_errno(code, format("memfd_create failed: %s", std::strerror(err)),
                                  err, "memfd_create");
    }
    if (ftruncate(fd, static_cast<off_t>(size)) < 0) {
        int err = errno;
        close(fd);
        return Status::from_errno("ERR_OUT_OF_MEMORY",
                                  format("ftruncate of a memfd failed: %s", std::strerror(err)),
                                  err, "ftruncate");
    }
    *out = fd;
    return Status::success();
}

Status seal_memfd(int fd) {
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
        int err = errno;
        return Status::from_errno("ERR_OUT_OF_MEMORY",
                                  format("sealing a memfd failed: %s", std::strerror(err)), err,
                                  "fcntl");
    }
    return Status::success();
}

std::vector<FrameRun> frame_runs(const PageBitmap &pages) {
    std::vector<FrameRun> runs;
    for (uint64_t page = 0; page < pages.pages(); page++) {
        if (!pages.test(page)) {
            continue;
        }
        if (!runs.empty() && runs.back().first + runs.back().count == page) {
            runs.back().count++;
        } else {
            runs.push_back(FrameRun{page, 1});
        }
    }
    return runs;
}

Snapshot::Snapshot(std::shared_ptr<const MemorySource> memory, VcpuState cpu, WaitState wait,
                   std::shared_ptr<const Snapshot> parent, PageBitmap diff, PageBitmap balloon,
                   uint64_t balloon_target)
    : memory_(std::move(memory)),
      cpu_(std::move(cpu)),
      wait_(wait),
      parent_(std::move(parent)),
      diff_(std::move(diff)),
      balloon_(std::move(balloon)),
      balloon_target_(balloon_target) {}

namespace {

// True when `host` (whose all-zero test is `zero`) equals page `page` of
// `base`. A pooled context keeps the pages it copied back from its source
// private, so a page can count as written although its content is the
// base's. A diff need not store such a page. A base page that cannot be
// read counts as different, which only makes the diff larger.
bool equals_base_page(const MemorySource &base, uint64_t page, const uint8_t *host, bool zero) {
    if (!base.present.test(page)) {
        return zero;
    }
    if (zero) {
        return false;
    }
    uint8_t original[VMM_PAGE_SIZE];
    const off_t offset = static_cast<off_t>(base.offset + page * VMM_PAGE_SIZE);
    if (pread(base.fd, original, VMM_PAGE_SIZE, offset) != static_cast<ssize_t>(VMM_PAGE_SIZE)) {
        return false;
    }
    return std::memcmp(original, host, VMM_PAGE_SIZE) == 0;
}

}  // namespace

Status Snapshot::capture(const GuestMemory &memory, std::shared_ptr<const MemorySource> base,
                         const PageBitmap &dirty, VcpuState cpu, WaitState wait,
                         std::shared_ptr<const Snapshot> parent, PageBitmap balloon,
                         uint64_t balloon_target, std::shared_ptr<const Snapshot> *out) {
    const uint64_t ram_size = memory.size();
    const uint64_t pages = ram_size / VMM_PAGE_SIZE;
    auto source = std::make_shared<MemorySource>();
    Status status = create_memfd("vmm-snapshot", ram_size, &source->fd);
    if (!status.ok()) {
        return status;
    }
    source->size = ram_size;
    source->ram_size = ram_size;
    source->present = PageBitmap(pages);
    PageBitmap diff(pages);

    // A page's content is in the VM's mapping whether it was written (a
    // private copy) or not (the base's shared page), so every page comes
    // from there. Zero pages stay holes in the memfd.
    for (uint64_t page = 0; page < pages; page++) {
        bool written = dirty.test(page);
        if (balloon.test(page)) {
            // Left out: it reads as zero here. A diff must still list it when
            // the base has content there, or loading would take the base's.
            if (base->present.test(page)) {
                diff.set(page);
            }
            continue;
        }
        if (!written && !base->present.test(page)) {
            continue;
        }
        const uint8_t *host = memory.host() + page * VMM_PAGE_SIZE;
        const bool zero = page_is_zero(host);
        if (written && !equals_base_page(*base, page, host, zero)) {
            diff.set(page);
        }
        if (zero) {
            continue;
        }
        source->present.set(page);
        off_t offset = static_cast<off_t>(page * VMM_PAGE_SIZE);
        if (pwrite(source->fd, host, VMM_PAGE_SIZE, offset) != static_cast<ssize_t>(VMM_PAGE_SIZE)) {
            int err = errno;
            return Status::from_errno("ERR_OUT_OF_MEMORY",
                                      format("writing snapshot memory failed: %s",
                                             std::strerror(err)),
                                      err, "pwrite");
        }
    }
    if (!parent) {
        // Without a parent the whole memory is the difference.
        diff = source->present;
    }
    status = seal_memfd(source->fd);
    if (!status.ok()) {
        return status;
    }
    *out = std::make_shared<Snapshot>(std::move(source), std::move(cpu), wait, std::move(parent),
                                      std::move(diff), std::move(balloon), balloon_target);
    return Status::success();
}

const std::array<uint8_t, 32> &Snapshot::content_hash() const {
    std::call_once(hash_once_, [this] {
        Sha256 sha;
        std::vector<uint8_t> state = cpu_.serialize();
        sha.update(state.data(), state.size());
        const uint64_t wait_fields[] = {wait_.in_wait ? 1u : 0u, wait_.block, wait_.buf, wait_.cap,
                                        wait_.deadline_remaining_ns};
        sha.update(wait_fields, sizeof(wait_fields));
        uint64_t ram = memory_->ram_size;
        sha.update(&ram, sizeof(ram));
        std::vector<uint8_t> page(VMM_PAGE_SIZE);
        for (uint64_t p = 0; p < memory_->present.pages(); p++) {
            if (!memory_->present.test(p)) {
                continue;
            }
            off_t offset = static_cast<off_t>(memory_->offset + p * VMM_PAGE_SIZE);
            ssize_t n = pread(memory_->fd, page.data(), VMM_PAGE_SIZE, offset);
            if (n != static_cast<ssize_t>(VMM_PAGE_SIZE)) {
                std::memset(page.data(), 0, VMM_PAGE_SIZE);
            }
            sha.update(&p, sizeof(p));
            sha.update(page.data(), VMM_PAGE_SIZE);
        }
        // The balloon target and run count, then the runs: the same runs
        // as a snapshot file's balloon section.
        std::vector<FrameRun> runs = frame_runs(balloon_);
        const uint64_t balloon_fields[] = {balloon_target_, runs.size()};
        sha.update(balloon_fields, sizeof(balloon_fields));
        sha.update(runs.data(), runs.size() * sizeof(FrameRun));
        hash_ = sha.finish();
    });
    return hash_;
}

}  // namespace vmm
