#include "memory/snapshot_file.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/sha256.h"
#include "kvm/uapi.h"
#include "kvm/x86_layout.h"
#include "vmm_abi.h"

namespace vmm {

namespace {

constexpr char kMagic[8] = {'N', 'V', 'M', 'M', 'S', 'N', 'A', 'P'};
// Version 2 added the balloon section. The loader rejects version 1 files,
// because they do not store the balloon and their clones would start with an
// empty one.
constexpr uint32_t kVersion = 2;
constexpr uint64_t kHeaderSize = 4096;
constexpr uint64_t kFlagDiff = 1;
constexpr uint64_t kMaxStateSize = 1 << 20;

// CPUID bits a snapshot's guest may have used, as this host's KVM reports
// them: leaf 1 ECX and EDX, leaf 7.0 EBX, ECX and EDX, leaf 0x80000001 ECX
// and EDX, leaf 0xD.0 EAX (XSAVE components).
struct CpuFeatures {
    uint32_t words[8];
};

// Fixed header at offset 0. All integers little-endian, as x86-64 stores them.
struct Header {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t ram_size;
    uint64_t flags;
    uint8_t parent_hash[32];
    uint8_t content_hash[32];
    uint64_t state_offset;
    uint64_t state_size;
    uint64_t index_offset;
    uint64_t index_count;
    uint64_t data_offset;
    uint64_t data_size;
    uint8_t state_sha[32];
    uint8_t index_sha[32];
    uint8_t data_sha[32];
    uint32_t abi_version;
    uint32_t reserved;
    CpuFeatures features;
    uint64_t wait_in_wait;
    uint64_t wait_block;
    uint64_t wait_buf;
    uint64_t wait_cap;
    uint64_t wait_deadline_remaining_ns;
    uint64_t balloon_target;  // pages
    uint64_t balloon_offset;
    uint64_t balloon_count;  // FrameRun entries
    uint8_t balloon_sha[32];
};
static_assert(sizeof(Header) < kHeaderSize - 32, "the header fits before its checksum");
constexpr uint64_t kHeaderShaOffset = kHeaderSize - 32;

uint64_t align_page(uint64_t value) { return (value + VMM_PAGE_SIZE - 1) & ~(VMM_PAGE_SIZE - 1); }

CpuFeatures host_features(const KvmSystem &sys) {
    CpuFeatures out{};
    const auto *header = static_cast<const uapi::CpuidHeader *>(sys.cpuid());
    const auto *entries = reinterpret_cast<const kvm_cpuid_entry2 *>(header + 1);
    for (uint32_t i = 0; i < header->nent; i++) {
        const kvm_cpuid_entry2 &e = entries[i];
        if (e.function == 1) {
            // Bit 27 (OSXSAVE) mirrors CR4 and is not a host feature.
            out.words[0] = e.ecx & ~(1u << 27);
            out.words[1] = e.edx;
        } else if (e.function == 7 && e.index == 0) {
            out.words[2] = e.ebx;
            out.words[3] = e.ecx;
            out.words[4] = e.edx;
        } else if (e.function == 0x80000001) {
            out.words[5] = e.ecx;
            out.words[6] = e.edx;
        } else if (e.function == 0xD && e.index == 0) {
            out.words[7] = e.eax;
        }
    }
    return out;
}

Status invalid(const std::string &path, const std::string &reason) {
    return Status::failure("ERR_SNAPSHOT_INVALID", "invalid snapshot file " + path + ": " + reason);
}

Status write_error(const std::string &path, const char *syscall, int err) {
    return Status::from_errno("ERR_SNAPSHOT_WRITE",
                              format("writing snapshot %s failed in %s: %s", path.c_str(), syscall,
                                     std::strerror(err)),
                              err, syscall);
}

bool write_all(int fd, const void *data, size_t size, uint64_t offset) {
    const auto *bytes = static_cast<const uint8_t *>(data);
    while (size > 0) {
        ssize_t n = pwrite(fd, bytes, size, static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        bytes += n;
        size -= static_cast<size_t>(n);
        offset += static_cast<uint64_t>(n);
    }
    return true;
}

// Reads exactly `size` bytes; returns false on a short read.
bool read_all(int fd, void *data, size_t size, uint64_t offset) {
    auto *bytes = static_cast<uint8_t *>(data);
    while (size > 0) {
        ssize_t n = pread(fd, bytes, size, static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        bytes += n;
        size -= static_cast<size_t>(n);
        offset += static_cast<uint64_t>(n);
    }
    return true;
}

std::string hex(const uint8_t *bytes, size_t n) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (size_t i = 0; i < n; i++) {
        out.push_back(digits[bytes[i] >> 4]);
        out.push_back(digits[bytes[i] & 15]);
    }
    return out;
}

// Returns the maximum number of balloon runs in `pages` pages of RAM. Runs lie
// above the reserved first MiB with at least one frame between each other.
uint64_t max_balloon_runs(uint64_t pages) {
    const uint64_t first_frame = VMM_RESERVED_END / VMM_PAGE_SIZE;
    return pages > first_frame ? (pages - first_frame + 1) / 2 : 0;
}

// Reads the balloon section that the header places inside the file, checks
// it, and returns its frames as a bitmap of `pages` pages. Every frame must
// be one that VMM_HC_BALLOON_INFLATE accepts (in RAM, above the first MiB),
// and the runs must ascend with a gap between each other, so no frame
// repeats and every balloon has one encoding.
Status read_balloon(int fd, const std::string &path, const Header &header, uint64_t pages,
                    PageBitmap *out) {
    std::vector<FrameRun> runs(header.balloon_count);
    const size_t bytes = runs.size() * sizeof(FrameRun);
    if (!read_all(fd, runs.data(), bytes, header.balloon_offset)) {
        return invalid(path, "the balloon section cannot be read");
    }
    Sha256 sha;
    sha.update(runs.data(), bytes);
    if (std::memcmp(sha.finish().data(), header.balloon_sha, 32) != 0) {
        return invalid(path, "the balloon section checksum does not match");
    }
    const uint64_t first_frame = VMM_RESERVED_END / VMM_PAGE_SIZE;
    PageBitmap frames(pages);
    uint64_t previous_end = 0;
    for (size_t i = 0; i < runs.size(); i++) {
        const FrameRun &run = runs[i];
        const auto first = static_cast<unsigned long long>(run.first);
        const auto count = static_cast<unsigned long long>(run.count);
        if (run.count == 0) {
            return invalid(path, format("balloon run %zu is empty", i));
        }
        // run.first + run.count can overflow, so compare the count with
        // the frames left after run.first instead.
        if (run.first < first_frame || run.first >= pages || run.count > pages - run.first) {
            return invalid(path, format("balloon run %zu (%llu frames from frame %llu) lies outside "
                                        "frames %llu to %llu, the guest RAM above the first MiB",
                                        i, count, first,
                                        static_cast<unsigned long long>(first_frame),
                                        static_cast<unsigned long long>(pages - 1)));
        }
        if (i > 0 && run.first < previous_end) {
            return invalid(path, format("balloon run %zu (from frame %llu) repeats frames or is out "
                                        "of order: the run before it ends at frame %llu",
                                        i, first, static_cast<unsigned long long>(previous_end - 1)));
        }
        if (i > 0 && run.first == previous_end) {
            return invalid(path, format("balloon run %zu (from frame %llu) touches the run before "
                                        "it, which the writer would have merged",
                                        i, first));
        }
        previous_end = run.first + run.count;
        for (uint64_t frame = run.first; frame < previous_end; frame++) {
            frames.set(frame);
        }
    }
    *out = std::move(frames);
    return Status::success();
}

// Checks that the first MiB of `memory` contains the supervisor area that the
// engine builds for some image: page tables that map each RAM page as
// read-write, read-only or read-execute for user mode, and the engine's GDT,
// IDT, TSS and stubs. Returns an empty string, or the reason it does not.
std::string check_supervisor_area(const MemorySource &memory, uint64_t ram_size) {
    std::vector<uint8_t> actual(VMM_RESERVED_END, 0);
    for (uint64_t gpa = 0; gpa < VMM_RESERVED_END; gpa += VMM_PAGE_SIZE) {
        if (memory.present.test(gpa / VMM_PAGE_SIZE) &&
            !read_all(memory.fd, actual.data() + gpa, VMM_PAGE_SIZE, memory.offset + gpa)) {
            return "a memory page cannot be read";
        }
    }

    // The page tables are the engine's if they decode to page ranges and
    // the engine, given those ranges, builds the same bytes.
    std::vector<x86::PageRange> ranges;
    std::string reason = x86::read_page_ranges(actual.data(), ram_size, &ranges);
    if (!reason.empty()) {
        return "its page tables are not the engine's: " + reason;
    }

    std::vector<uint8_t> expected(VMM_RESERVED_END, 0);
    reason = x86::build_supervisor_area(expected.data(), ram_size, ranges);
    if (!reason.empty()) {
        return "its page tables are not the engine's: " + reason;
    }

    // The stubs' stack (kStackBottom to kSupervisorEnd) contains the last
    // exception frame and is not compared. Nor is the boot information page.
    const uint64_t checked[][2] = {{x86::kPml4, x86::kStackBottom},
                                   {x86::kPtPool, x86::kPtPoolEnd}};
    for (const auto &area : checked) {
        for (uint64_t gpa = area[0]; gpa < area[1]; gpa += VMM_PAGE_SIZE) {
            if (std::memcmp(actual.data() + gpa, expected.data() + gpa, VMM_PAGE_SIZE) != 0) {
                return format("its supervisor page at 0x%llx differs from the engine's",
                              static_cast<unsigned long long>(gpa));
            }
        }
    }
    return "";
}

std::string directory_of(const std::string &path) {
    size_t slash = path.rfind('/');
    if (slash == std::string::npos) {
        return ".";
    }
    return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

Status save_snapshot(const Snapshot &snapshot, const KvmSystem &sys, const std::string &path) {
    // rename() replaces whatever the path names; replacing a device node,
    // a directory or a socket with a snapshot is never what the caller meant.
    struct stat existing {};
    if (lstat(path.c_str(), &existing) == 0 && !S_ISREG(existing.st_mode)) {
        return Status::failure("ERR_SNAPSHOT_WRITE",
                               format("failed to save snapshot %s: the path exists and is not a "
                                      "regular file; choose another path",
                                      path.c_str()));
    }
    const MemorySource &memory = *snapshot.memory();
    const bool diff = snapshot.parent() != nullptr;
    const PageBitmap &pages = diff ? snapshot.diff() : memory.present;

    std::vector<uint64_t> index;
    for (uint64_t p = 0; p < pages.pages(); p++) {
        if (pages.test(p)) {
            index.push_back(p);
        }
    }
    std::vector<uint8_t> state = snapshot.cpu().serialize();
    const std::vector<FrameRun> balloon = frame_runs(snapshot.balloon_pages());
    const uint64_t balloon_bytes = balloon.size() * sizeof(FrameRun);

    Header header{};
    std::memcpy(header.magic, kMagic, sizeof(kMagic));
    header.version = kVersion;
    header.header_size = kHeaderSize;
    header.ram_size = snapshot.ram_size();
    header.flags = diff ? kFlagDiff : 0;
    if (diff) {
        std::memcpy(header.parent_hash, snapshot.parent()->content_hash().data(), 32);
    }
    std::memcpy(header.content_hash, snapshot.content_hash().data(), 32);
    header.state_offset = kHeaderSize;
    header.state_size = state.size();
    header.index_offset = align_page(header.state_offset + header.state_size);
    header.index_count = index.size();
    header.balloon_target = snapshot.balloon_target();
    header.balloon_offset = align_page(header.index_offset + index.size() * 8);
    header.balloon_count = balloon.size();
    header.data_offset = align_page(header.balloon_offset + balloon_bytes);
    header.data_size = snapshot.ram_size();
    header.abi_version = VMM_ABI_VERSION;
    header.features = host_features(sys);
    const WaitState &wait = snapshot.wait();
    header.wait_in_wait = wait.in_wait ? 1 : 0;
    header.wait_block = wait.block;
    header.wait_buf = wait.buf;
    header.wait_cap = wait.cap;
    header.wait_deadline_remaining_ns = wait.deadline_remaining_ns;

    Sha256 state_sha;
    state_sha.update(state.data(), state.size());
    std::array<uint8_t, 32> digest = state_sha.finish();
    std::memcpy(header.state_sha, digest.data(), 32);
    Sha256 index_sha;
    index_sha.update(index.data(), index.size() * 8);
    digest = index_sha.finish();
    std::memcpy(header.index_sha, digest.data(), 32);
    Sha256 balloon_sha;
    balloon_sha.update(balloon.data(), balloon_bytes);
    digest = balloon_sha.finish();
    std::memcpy(header.balloon_sha, digest.data(), 32);

    uint64_t random = 0;
    if (getrandom(&random, sizeof(random), 0) != static_cast<ssize_t>(sizeof(random))) {
        random = static_cast<uint64_t>(getpid());
    }
    const std::string tmp = format("%s.tmp-%d-%llx", path.c_str(), static_cast<int>(getpid()),
                                   static_cast<unsigned long long>(random));
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        return write_error(path, "open", errno);
    }
    auto fail = [&](const char *syscall) {
        int err = errno != 0 ? errno : EIO;
        close(fd);
        unlink(tmp.c_str());
        return write_error(path, syscall, err);
    };
    errno = 0;
    if (ftruncate(fd, static_cast<off_t>(header.data_offset + header.data_size)) < 0) {
        return fail("ftruncate");
    }
    if (!write_all(fd, state.data(), state.size(), header.state_offset) ||
        !write_all(fd, index.data(), index.size() * 8, header.index_offset) ||
        !write_all(fd, balloon.data(), balloon_bytes, header.balloon_offset)) {
        return fail("pwrite");
    }
    Sha256 data_sha;
    std::vector<uint8_t> page(VMM_PAGE_SIZE);
    for (uint64_t p : index) {
        uint64_t offset = p * VMM_PAGE_SIZE;
        if (memory.present.test(p) && offset < memory.size) {
            if (!read_all(memory.fd, page.data(), VMM_PAGE_SIZE, memory.offset + offset)) {
                return fail("pread");
            }
        } else {
            std::memset(page.data(), 0, VMM_PAGE_SIZE);
        }
        data_sha.update(page.data(), VMM_PAGE_SIZE);
        // A listed zero page (one a diff overrides with zero) stays a hole,
        // which reads as zero: the file keeps its sparse size.
        if (!page_is_zero(page.data()) &&
            !write_all(fd, page.data(), VMM_PAGE_SIZE, header.data_offset + offset)) {
            return fail("pwrite");
        }
    }
    digest = data_sha.finish();
    std::memcpy(header.data_sha, digest.data(), 32);

    std::vector<uint8_t> block(kHeaderSize, 0);
    std::memcpy(block.data(), &header, sizeof(header));
    Sha256 header_sha;
    header_sha.update(block.data(), kHeaderShaOffset);
    digest = header_sha.finish();
    std::memcpy(block.data() + kHeaderShaOffset, digest.data(), 32);
    if (!write_all(fd, block.data(), block.size(), 0)) {
        return fail("pwrite");
    }
    if (fsync(fd) < 0) {
        return fail("fsync");
    }
    close(fd);
    if (rename(tmp.c_str(), path.c_str()) < 0) {
        int err = errno;
        unlink(tmp.c_str());
        return write_error(path, "rename", err);
    }
    int dir = open(directory_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        fsync(dir);
        close(dir);
    }
    return Status::success();
}

Status load_snapshot(const KvmSystem &sys, const std::string &path,
                     std::shared_ptr<const Snapshot> parent,
                     std::shared_ptr<const Snapshot> *out) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        return Status::from_errno("ERR_SNAPSHOT_READ",
                                  format("failed to open snapshot %s: %s", path.c_str(),
                                         std::strerror(err)),
                                  err, "open");
    }
    // Owns fd until a MemorySource takes it.
    auto source = std::make_shared<MemorySource>();
    source->fd = fd;
    struct stat st {};
    if (fstat(fd, &st) < 0) {
        return Status::from_errno("ERR_SNAPSHOT_READ", "fstat of the snapshot failed", errno,
                                  "fstat");
    }
    if (!S_ISREG(st.st_mode)) {
        return Status::failure("ERR_SNAPSHOT_READ",
                               format("failed to read snapshot %s: not a regular file", path.c_str()));
    }
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);

    std::vector<uint8_t> block(kHeaderSize);
    if (file_size < kHeaderSize) {
        return invalid(path, format("the file is %llu bytes, shorter than its %llu-byte header",
                                    static_cast<unsigned long long>(file_size),
                                    static_cast<unsigned long long>(kHeaderSize)));
    }
    if (!read_all(fd, block.data(), kHeaderSize, 0)) {
        int err = errno;
        return Status::from_errno("ERR_SNAPSHOT_READ",
                                  format("failed to read the header of snapshot %s: %s", path.c_str(),
                                         err != 0 ? std::strerror(err) : "the file shrank"),
                                  err, "pread");
    }
    Header header;
    std::memcpy(&header, block.data(), sizeof(header));
    if (std::memcmp(header.magic, kMagic, sizeof(kMagic)) != 0) {
        return invalid(path, "it does not start with the NVMMSNAP magic");
    }
    if (header.version != kVersion) {
        return invalid(path, format("format version %u is not supported (this engine reads %u)",
                                    header.version, kVersion));
    }
    Sha256 header_sha;
    header_sha.update(block.data(), kHeaderShaOffset);
    if (std::memcmp(header_sha.finish().data(), block.data() + kHeaderShaOffset, 32) != 0) {
        return invalid(path, "the header checksum does not match");
    }

    // Sizes and offsets, each checked against the file and for overflow.
    const uint64_t pages = header.ram_size / VMM_PAGE_SIZE;
    uint64_t index_bytes;
    uint64_t balloon_bytes;
    uint64_t state_end;
    uint64_t index_end;
    uint64_t balloon_end;
    uint64_t data_end;
    if (header.header_size != kHeaderSize || header.ram_size < VMM_RAM_MIN ||
        header.ram_size > VMM_RAM_MAX || header.ram_size % VMM_RAM_ALIGN != 0 ||
        header.data_size != header.ram_size || header.state_size > kMaxStateSize ||
        header.data_offset % VMM_PAGE_SIZE != 0 || header.index_count > pages ||
        header.balloon_count > max_balloon_runs(pages) ||
        __builtin_mul_overflow(header.index_count, 8, &index_bytes) ||
        __builtin_mul_overflow(header.balloon_count, sizeof(FrameRun), &balloon_bytes) ||
        __builtin_add_overflow(header.state_offset, header.state_size, &state_end) ||
        __builtin_add_overflow(header.index_offset, index_bytes, &index_end) ||
        __builtin_add_overflow(header.balloon_offset, balloon_bytes, &balloon_end) ||
        __builtin_add_overflow(header.data_offset, header.data_size, &data_end) ||
        header.state_offset < kHeaderSize || state_end > header.index_offset ||
        index_end > header.balloon_offset || balloon_end > header.data_offset) {
        return invalid(path, "the header's sizes or offsets are inconsistent");
    }
    if (header.balloon_target > pages) {
        return invalid(path, format("its balloon target of %llu pages exceeds its %llu pages of RAM",
                                    static_cast<unsigned long long>(header.balloon_target),
                                    static_cast<unsigned long long>(pages)));
    }
    if (data_end > file_size) {
        return invalid(path, format("the file is truncated: %llu bytes, the header needs %llu",
                                    static_cast<unsigned long long>(file_size),
                                    static_cast<unsigned long long>(data_end)));
    }
    if (header.abi_version != VMM_ABI_VERSION) {
        return invalid(path, format("it was taken with guest ABI %u, this engine runs %u",
                                    header.abi_version, VMM_ABI_VERSION));
    }
    const CpuFeatures host = host_features(sys);
    for (int i = 0; i < 8; i++) {
        uint32_t missing = header.features.words[i] & ~host.words[i];
        if (missing != 0) {
            return invalid(path, format("it needs CPU features this host lacks (CPUID word %d, "
                                        "bits 0x%08x)",
                                        i, missing));
        }
    }

    std::vector<uint8_t> state(header.state_size);
    Sha256 state_sha;
    if (!read_all(fd, state.data(), state.size(), header.state_offset)) {
        return invalid(path, "the vCPU state cannot be read");
    }
    state_sha.update(state.data(), state.size());
    if (std::memcmp(state_sha.finish().data(), header.state_sha, 32) != 0) {
        return invalid(path, "the vCPU state checksum does not match");
    }
    VcpuState cpu;
    std::string reason = cpu.deserialize(state.data(), state.size(), sys);
    if (!reason.empty()) {
        return invalid(path, reason);
    }

    std::vector<uint64_t> index(header.index_count);
    Sha256 index_sha;
    if (!read_all(fd, index.data(), index_bytes, header.index_offset)) {
        return invalid(path, "the page index cannot be read");
    }
    index_sha.update(index.data(), index_bytes);
    if (std::memcmp(index_sha.finish().data(), header.index_sha, 32) != 0) {
        return invalid(path, "the page index checksum does not match");
    }
    PageBitmap listed(pages);
    for (size_t i = 0; i < index.size(); i++) {
        if (index[i] >= pages || (i > 0 && index[i] <= index[i - 1])) {
            return invalid(path, "the page index is not sorted or lists a page outside RAM");
        }
        listed.set(index[i]);
    }
    PageBitmap balloon;
    Status balloon_status = read_balloon(fd, path, header, pages, &balloon);
    if (!balloon_status.ok()) {
        return balloon_status;
    }

    // Every listed page feeds the data checksum; any other data in the
    // memory section must be zero, because a full snapshot maps the section
    // as it is and the checksum does not cover it.
    Sha256 data_sha;
    std::vector<uint8_t> page(VMM_PAGE_SIZE);
    PageBitmap present(pages);
    for (uint64_t p : index) {
        if (!read_all(fd, page.data(), VMM_PAGE_SIZE, header.data_offset + p * VMM_PAGE_SIZE)) {
            return invalid(path, "a memory page cannot be read");
        }
        data_sha.update(page.data(), VMM_PAGE_SIZE);
        if (!page_is_zero(page.data())) {
            present.set(p);
        }
    }
    if (std::memcmp(data_sha.finish().data(), header.data_sha, 32) != 0) {
        return invalid(path, "the memory checksum does not match");
    }
    for (off_t at = static_cast<off_t>(header.data_offset);;) {
        off_t data = lseek(fd, at, SEEK_DATA);
        if (data < 0 || static_cast<uint64_t>(data) >= data_end) {
            break;
        }
        off_t hole = lseek(fd, data, SEEK_HOLE);
        uint64_t end = hole < 0 ? data_end : static_cast<uint64_t>(hole);
        for (uint64_t off = static_cast<uint64_t>(data) & ~(VMM_PAGE_SIZE - 1); off < end && off < data_end;
             off += VMM_PAGE_SIZE) {
            uint64_t p = (off - header.data_offset) / VMM_PAGE_SIZE;
            if (listed.test(p)) {
                continue;
            }
            if (!read_all(fd, page.data(), VMM_PAGE_SIZE, off) || !page_is_zero(page.data())) {
                return invalid(path, format("memory page %llu holds data the page index does not list",
                                            static_cast<unsigned long long>(p)));
            }
        }
        at = hole < 0 ? static_cast<off_t>(data_end) : hole;
    }

    WaitState wait;
    wait.in_wait = header.wait_in_wait != 0;
    wait.block = header.wait_block;
    wait.buf = header.wait_buf;
    wait.cap = header.wait_cap;
    wait.deadline_remaining_ns = header.wait_deadline_remaining_ns;

    const bool diff = (header.flags & kFlagDiff) != 0;
    std::shared_ptr<const MemorySource> memory;
    if (!diff) {
        source->offset = header.data_offset;
        source->size = header.ram_size;
        source->file = true;
        source->ram_size = header.ram_size;
        source->present = present;
        memory = source;
        parent = nullptr;
    } else {
        if (!parent) {
            return invalid(path, "it is a diff snapshot: load its parent first and pass it as "
                                 "the parent option");
        }
        if (std::memcmp(parent->content_hash().data(), header.parent_hash, 32) != 0) {
            return invalid(path, "its parent has hash " + hex(header.parent_hash, 32) +
                                     ", the snapshot given as parent has " +
                                     hex(parent->content_hash().data(), 32));
        }
        if (parent->ram_size() != header.ram_size) {
            return invalid(path, "its RAM size differs from its parent's");
        }
        // Parent pages first, then this file's pages over them, in a memfd.
        auto merged = std::make_shared<MemorySource>();
        Status status = create_memfd("vmm-snapshot", header.ram_size, &merged->fd);
        if (!status.ok()) {
            return status;
        }
        merged->size = header.ram_size;
        merged->ram_size = header.ram_size;
        merged->present = PageBitmap(pages);
        const MemorySource &base = *parent->memory();
        for (uint64_t p = 0; p < pages; p++) {
            bool from_file = listed.test(p);
            if (!from_file && !base.present.test(p)) {
                continue;
            }
            bool ok = from_file ? read_all(fd, page.data(), VMM_PAGE_SIZE,
                                           header.data_offset + p * VMM_PAGE_SIZE)
                                : read_all(base.fd, page.data(), VMM_PAGE_SIZE,
                                           base.offset + p * VMM_PAGE_SIZE);
            if (!ok) {
                return invalid(path, "a memory page cannot be read");
            }
            if (page_is_zero(page.data())) {
                continue;
            }
            merged->present.set(p);
            if (!write_all(merged->fd, page.data(), VMM_PAGE_SIZE, p * VMM_PAGE_SIZE)) {
                return Status::from_errno("ERR_OUT_OF_MEMORY", "writing snapshot memory failed",
                                          errno, "pwrite");
            }
        }
        status = seal_memfd(merged->fd);
        if (!status.ok()) {
            return status;
        }
        memory = merged;
    }

    // The content hash and every clone read a ballooned page as zero.
    for (uint64_t p = 0; p < pages; p++) {
        if (balloon.test(p) && memory->present.test(p)) {
            return invalid(path, format("balloon frame %llu holds data in the snapshot's memory",
                                        static_cast<unsigned long long>(p)));
        }
    }

    // A snapshot file is input from outside: its vCPU must be in user mode
    // with the engine's paging, and its supervisor area (page tables, GDT,
    // IDT, stubs) exactly what the engine builds, so that a crafted file
    // cannot give its guest supervisor mode or page tables of its own.
    if (cpu.sregs.cs.dpl != 3 || cpu.sregs.ss.dpl != 3 || cpu.sregs.cr3 != x86::kPml4 ||
        cpu.sregs.gdt.base != x86::kGdt || cpu.sregs.idt.base != x86::kIdt ||
        cpu.sregs.tr.base != x86::kTss) {
        return invalid(path, "its vCPU state is not the engine's user mode");
    }
    // Without EFER.NXE the CPU would not honor the no-execute bits, and
    // without CR0.PG or CR0.WP the page tables would not protect anything.
    if (cpu.sregs.cr0 != x86::kCr0 || cpu.sregs.cr4 != x86::kCr4 ||
        cpu.sregs.efer != x86::kEfer) {
        return invalid(path, format("its control registers (cr0 0x%llx, cr4 0x%llx, efer 0x%llx) "
                                    "are not the engine's",
                                    static_cast<unsigned long long>(cpu.sregs.cr0),
                                    static_cast<unsigned long long>(cpu.sregs.cr4),
                                    static_cast<unsigned long long>(cpu.sregs.efer)));
    }
    std::string supervisor_error = check_supervisor_area(*memory, header.ram_size);
    if (!supervisor_error.empty()) {
        return invalid(path, supervisor_error);
    }

    auto snapshot = std::make_shared<Snapshot>(memory, std::move(cpu), wait, parent,
                                               diff ? listed : present, std::move(balloon),
                                               header.balloon_target);
    if (std::memcmp(snapshot->content_hash().data(), header.content_hash, 32) != 0) {
        return invalid(path, "its content does not match the content hash in its header");
    }
    *out = std::move(snapshot);
    return Status::success();
}

}  // namespace vmm
