#include "elf.h"

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>
#include <utility>

#include "../guest/include/vmm_abi.h"

namespace vmm {
namespace {

// ELF constants from the System V gABI and its x86-64 supplement. They are
// defined here instead of taken from <elf.h> because this directory's own
// elf.h would shadow the system header under some include paths.
constexpr size_t kEhdrSize = 64; // sizeof(Elf64_Ehdr)
constexpr size_t kPhdrSize = 56; // sizeof(Elf64_Phdr)
constexpr size_t kNhdrSize = 12; // sizeof(Elf64_Nhdr)

constexpr uint8_t kElfMagic[4] = {0x7f, 'E', 'L', 'F'};
constexpr size_t kEiClass = 4;
constexpr size_t kEiData = 5;
constexpr size_t kEiVersion = 6;
constexpr uint8_t kElfClass64 = 2;
constexpr uint8_t kElfData2Lsb = 1;
constexpr uint32_t kEvCurrent = 1;
constexpr uint16_t kEtExec = 2;
constexpr uint16_t kEmX86_64 = 62;

// Byte offsets of the Elf64_Ehdr fields that parse_elf reads.
constexpr size_t kEType = 16;
constexpr size_t kEMachine = 18;
constexpr size_t kEVersion = 20;
constexpr size_t kEEntry = 24;
constexpr size_t kEPhoff = 32;
constexpr size_t kEEhsize = 52;
constexpr size_t kEPhentsize = 54;
constexpr size_t kEPhnum = 56;

// Byte offsets of the Elf64_Phdr fields. p_paddr is not read: the host loads
// at p_vaddr because guest virtual addresses equal guest physical addresses.
constexpr size_t kPType = 0;
constexpr size_t kPFlags = 4;
constexpr size_t kPOffset = 8;
constexpr size_t kPVaddr = 16;
constexpr size_t kPFilesz = 32;
constexpr size_t kPMemsz = 40;
constexpr size_t kPAlign = 48;

constexpr uint32_t kPtLoad = 1;
constexpr uint32_t kPtDynamic = 2;
constexpr uint32_t kPtInterp = 3;
constexpr uint32_t kPtNote = 4;

constexpr uint64_t kPageSize = VMM_PAGE_SIZE;

struct LoadSegment {
    size_t index; // in the program header table
    ElfSegment segment;
};

std::string format_message(const char *format, ...) __attribute__((format(printf, 1, 2)));

std::string format_message(const char *format, ...) {
    char buffer[256];
    va_list args;
    va_start(args, format);
    int length = std::vsnprintf(buffer, sizeof(buffer), format, args);
    va_end(args);
    if (length < 0) {
        return "ELF image is invalid";
    }
    return std::string(buffer);
}

// Callers pass offsets that are already checked to lie inside the buffer.
uint16_t read_u16(const uint8_t *p) {
    return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

uint32_t read_u32(const uint8_t *p) {
    return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
           (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

uint64_t read_u64(const uint8_t *p) {
    return static_cast<uint64_t>(read_u32(p)) | (static_cast<uint64_t>(read_u32(p + 4)) << 32);
}

uint64_t page_floor(uint64_t address) {
    return address & ~(kPageSize - 1);
}

// Only called on addresses at most VMM_RAM_MAX, so the sum cannot overflow.
uint64_t page_ceil(uint64_t address) {
    return (address + kPageSize - 1) & ~(kPageSize - 1);
}

// Checks that [offset, offset + length) lies inside a file of file_size bytes.
bool file_range_ok(uint64_t offset, uint64_t length, size_t file_size) {
    uint64_t end;
    if (__builtin_add_overflow(offset, length, &end)) {
        return false;
    }
    return end <= file_size;
}

std::string check_header(const uint8_t *data, size_t size) {
    if (size < kEhdrSize) {
        return format_message("file size %zu is smaller than the %zu-byte ELF header", size,
                              kEhdrSize);
    }
    if (std::memcmp(data, kElfMagic, sizeof(kElfMagic)) != 0) {
        return format_message("bad ELF magic %02x %02x %02x %02x, expected 7f 45 4c 46", data[0],
                              data[1], data[2], data[3]);
    }
    if (data[kEiClass] != kElfClass64) {
        return format_message("EI_CLASS %u is not ELFCLASS64 (2)", data[kEiClass]);
    }
    if (data[kEiData] != kElfData2Lsb) {
        return format_message("EI_DATA %u is not ELFDATA2LSB (1, little-endian)", data[kEiData]);
    }
    if (data[kEiVersion] != kEvCurrent) {
        return format_message("EI_VERSION %u is not EV_CURRENT (1)", data[kEiVersion]);
    }
    uint16_t type = read_u16(data + kEType);
    if (type != kEtExec) {
        return format_message("e_type %u is not ET_EXEC (2), the type of a static executable",
                              type);
    }
    uint16_t machine = read_u16(data + kEMachine);
    if (machine != kEmX86_64) {
        return format_message("e_machine %u is not EM_X86_64 (62)", machine);
    }
    uint32_t version = read_u32(data + kEVersion);
    if (version != kEvCurrent) {
        return format_message("e_version %" PRIu32 " is not EV_CURRENT (1)", version);
    }
    uint16_t ehsize = read_u16(data + kEEhsize);
    if (ehsize != kEhdrSize) {
        return format_message("e_ehsize %u is not %zu", ehsize, kEhdrSize);
    }
    uint16_t phentsize = read_u16(data + kEPhentsize);
    if (phentsize != kPhdrSize) {
        return format_message("e_phentsize %u is not %zu", phentsize, kPhdrSize);
    }
    uint16_t phnum = read_u16(data + kEPhnum);
    if (phnum == 0) {
        return "e_phnum is 0, so the file has no program headers";
    }
    if (phnum > kElfMaxProgramHeaders) {
        return format_message("e_phnum %u is larger than the maximum %u", phnum,
                              kElfMaxProgramHeaders);
    }
    uint64_t phoff = read_u64(data + kEPhoff);
    uint64_t table_size;
    if (__builtin_mul_overflow(static_cast<uint64_t>(phnum), static_cast<uint64_t>(phentsize),
                               &table_size) ||
        !file_range_ok(phoff, table_size, size)) {
        return format_message("program header table (e_phoff 0x%" PRIx64 ", %u entries of %u "
                              "bytes) lies outside the %zu-byte file",
                              phoff, phnum, phentsize, size);
    }
    return "";
}

// Checks one PT_LOAD program header and appends it to *loads unless its
// p_memsz is 0.
std::string check_load(const uint8_t *phdr, size_t index, size_t file_size,
                       std::vector<LoadSegment> *loads) {
    uint32_t flags = read_u32(phdr + kPFlags);
    uint64_t offset = read_u64(phdr + kPOffset);
    uint64_t vaddr = read_u64(phdr + kPVaddr);
    uint64_t filesz = read_u64(phdr + kPFilesz);
    uint64_t memsz = read_u64(phdr + kPMemsz);
    uint64_t align = read_u64(phdr + kPAlign);

    if (filesz > memsz) {
        return format_message("PT_LOAD %zu: p_filesz 0x%" PRIx64
                              " is larger than p_memsz 0x%" PRIx64,
                              index, filesz, memsz);
    }
    if (memsz == 0) {
        return ""; // an empty segment loads nothing
    }
    // The VMM maps each page writable or executable, never both, so that a
    // guest can neither change its code nor run its data.
    if ((flags & kElfPfW) != 0 && (flags & kElfPfX) != 0) {
        return format_message("PT_LOAD %zu: p_flags 0x%" PRIx32 " sets both PF_W and PF_X, but "
                              "the VMM maps no page both writable and executable, so link code "
                              "and data into separate segments",
                              index, flags);
    }
    // The host copies bytes, so p_offset and p_vaddr need not be congruent
    // modulo p_align. The gABI allows only 0, 1 and powers of two, so any
    // other value marks a corrupt header.
    if (align > 1 && (align & (align - 1)) != 0) {
        return format_message("PT_LOAD %zu: p_align 0x%" PRIx64 " is not 0, 1 or a power of two",
                              index, align);
    }
    if (!file_range_ok(offset, filesz, file_size)) {
        return format_message("PT_LOAD %zu: p_offset 0x%" PRIx64 " + p_filesz 0x%" PRIx64
                              " lies outside the %zu-byte file",
                              index, offset, filesz, file_size);
    }
    uint64_t end;
    if (__builtin_add_overflow(vaddr, memsz, &end)) {
        return format_message("PT_LOAD %zu: p_vaddr 0x%" PRIx64 " + p_memsz 0x%" PRIx64
                              " overflows 64 bits",
                              index, vaddr, memsz);
    }
    if (vaddr < VMM_RESERVED_END) {
        return format_message("PT_LOAD %zu: p_vaddr 0x%" PRIx64 " is below 0x%llx, inside the "
                              "area the VMM reserves",
                              index, vaddr, VMM_RESERVED_END);
    }
    if (end > VMM_RAM_MAX) {
        return format_message("PT_LOAD %zu: segment end 0x%" PRIx64 " (p_vaddr + p_memsz) is "
                              "above 0x%llx, the largest guest RAM size",
                              index, end, VMM_RAM_MAX);
    }
    LoadSegment load;
    load.index = index;
    load.segment.vaddr = vaddr;
    load.segment.memsz = memsz;
    load.segment.offset = offset;
    load.segment.filesz = filesz;
    load.segment.flags = flags & (kElfPfX | kElfPfW | kElfPfR);
    loads->push_back(load);
    return "";
}

// Scans the notes of one PT_NOTE segment for the ABI note. Sets *found and
// *version when the segment contains it.
std::string scan_notes(const uint8_t *data, size_t file_size, const uint8_t *phdr, size_t index,
                       bool *found, uint32_t *version) {
    uint64_t offset = read_u64(phdr + kPOffset);
    uint64_t filesz = read_u64(phdr + kPFilesz);
    uint64_t align = read_u64(phdr + kPAlign);
    if (!file_range_ok(offset, filesz, file_size)) {
        return format_message("PT_NOTE %zu: p_offset 0x%" PRIx64 " + p_filesz 0x%" PRIx64
                              " lies outside the %zu-byte file",
                              index, offset, filesz, file_size);
    }
    // Linux tools pad note names and descriptors to 4 bytes. GNU ld gives
    // 8-byte aligned note sections such as .note.gnu.property their own
    // PT_NOTE with p_align 8, where notes use the gABI's 8-byte padding.
    uint64_t note_align = align == 8 ? 8 : 4;
    const uint8_t *notes = data + offset;
    uint64_t position = 0;
    while (position < filesz) {
        uint64_t remaining = filesz - position;
        if (remaining < kNhdrSize) {
            return format_message("PT_NOTE %zu: note header at segment offset 0x%" PRIx64
                                  " needs %zu bytes, but only 0x%" PRIx64 " remain",
                                  index, position, kNhdrSize, remaining);
        }
        const uint8_t *note = notes + position;
        uint32_t namesz = read_u32(note);
        uint32_t descsz = read_u32(note + 4);
        uint32_t type = read_u32(note + 8);
        // The sizes are 32-bit, so these 64-bit sums cannot overflow.
        uint64_t name_end = kNhdrSize + static_cast<uint64_t>(namesz);
        uint64_t desc_offset = (name_end + note_align - 1) & ~(note_align - 1);
        uint64_t desc_end = desc_offset + descsz;
        uint64_t next = (desc_end + note_align - 1) & ~(note_align - 1);
        if (desc_offset > remaining) {
            return format_message("PT_NOTE %zu: n_namesz 0x%" PRIx32 " of the note at segment "
                                  "offset 0x%" PRIx64 " runs past the segment end",
                                  index, namesz, position);
        }
        if (desc_end > remaining) {
            return format_message("PT_NOTE %zu: n_descsz 0x%" PRIx32 " of the note at segment "
                                  "offset 0x%" PRIx64 " runs past the segment end",
                                  index, descsz, position);
        }
        const char owner[] = VMM_NOTE_OWNER;
        bool is_abi_note = namesz == sizeof(owner) && type == VMM_NOTE_ABI &&
                           std::memcmp(note + kNhdrSize, owner, sizeof(owner)) == 0;
        if (is_abi_note) {
            if (*found) {
                return format_message("PT_NOTE %zu: second ABI note at segment offset 0x%" PRIx64
                                      ", but an image may carry only one",
                                      index, position);
            }
            if (descsz != sizeof(uint32_t)) {
                return format_message("PT_NOTE %zu: ABI note n_descsz %" PRIu32 " is not 4",
                                      index, descsz);
            }
            *found = true;
            *version = read_u32(note + desc_offset);
        }
        // The padding after the last descriptor may be cut off at the
        // segment end.
        position += std::min(next, remaining);
    }
    return "";
}

// Checks that no two segments share a page, because the host maps each
// guest page with one set of permissions. Sorts *loads by vaddr.
std::string check_overlap(std::vector<LoadSegment> *loads) {
    std::stable_sort(loads->begin(), loads->end(),
                     [](const LoadSegment &a, const LoadSegment &b) {
                         return a.segment.vaddr < b.segment.vaddr;
                     });
    // After sorting, two segments share a page only if some neighbor pair does.
    for (size_t i = 1; i < loads->size(); ++i) {
        const LoadSegment &previous = (*loads)[i - 1];
        const LoadSegment &current = (*loads)[i];
        uint64_t previous_end = previous.segment.vaddr + previous.segment.memsz;
        uint64_t current_end = current.segment.vaddr + current.segment.memsz;
        if (page_floor(current.segment.vaddr) < page_ceil(previous_end)) {
            return format_message("PT_LOAD %zu (0x%" PRIx64 "-0x%" PRIx64 ") shares a 4 KiB page "
                                  "with PT_LOAD %zu (0x%" PRIx64 "-0x%" PRIx64 ")",
                                  current.index, current.segment.vaddr, current_end,
                                  previous.index, previous.segment.vaddr, previous_end);
        }
    }
    return "";
}

std::string check_entry(uint64_t entry, const std::vector<LoadSegment> &loads) {
    for (const LoadSegment &load : loads) {
        const ElfSegment &segment = load.segment;
        if (entry < segment.vaddr || entry - segment.vaddr >= segment.memsz) {
            continue;
        }
        if ((segment.flags & kElfPfX) == 0) {
            return format_message("e_entry 0x%" PRIx64 " lies in PT_LOAD %zu, which lacks PF_X",
                                  entry, load.index);
        }
        return "";
    }
    return format_message("e_entry 0x%" PRIx64 " is not inside any PT_LOAD segment", entry);
}

std::string parse_elf_unchecked(const uint8_t *data, size_t size, ElfImage *out) {
    std::string error = check_header(data, size);
    if (!error.empty()) {
        return error;
    }
    uint64_t phoff = read_u64(data + kEPhoff);
    uint16_t phnum = read_u16(data + kEPhnum);

    std::vector<LoadSegment> loads;
    bool seen_load = false;
    bool found_note = false;
    uint32_t abi_version = 0;
    for (size_t i = 0; i < phnum; ++i) {
        const uint8_t *phdr = data + phoff + i * kPhdrSize;
        uint32_t type = read_u32(phdr + kPType);
        if (type == kPtInterp || type == kPtDynamic) {
            return format_message("program header %zu is %s, but only static executables are "
                                  "supported",
                                  i, type == kPtInterp ? "PT_INTERP" : "PT_DYNAMIC");
        }
        if (type == kPtLoad) {
            seen_load = true;
            error = check_load(phdr, i, size, &loads);
        } else if (type == kPtNote) {
            error = scan_notes(data, size, phdr, i, &found_note, &abi_version);
        }
        if (!error.empty()) {
            return error;
        }
    }
    if (!seen_load) {
        return "no PT_LOAD program header, so the image loads nothing";
    }
    if (loads.empty()) {
        return "every PT_LOAD segment has p_memsz 0, so the image loads nothing";
    }
    error = check_overlap(&loads);
    if (!error.empty()) {
        return error;
    }
    uint64_t entry = read_u64(data + kEEntry);
    error = check_entry(entry, loads);
    if (!error.empty()) {
        return error;
    }
    if (!found_note) {
        return format_message("ABI note (PT_NOTE with owner \"%s\", type %u) is missing",
                              VMM_NOTE_OWNER, VMM_NOTE_ABI);
    }
    if (abi_version != VMM_ABI_VERSION) {
        return format_message("ABI note version %" PRIu32 " is not supported, because this "
                              "VMM supports only version %u",
                              abi_version, VMM_ABI_VERSION);
    }

    ElfImage image;
    image.entry = entry;
    image.abi_version = abi_version;
    image.load_end = 0;
    for (const LoadSegment &load : loads) {
        image.load_end = std::max(image.load_end,
                                  page_ceil(load.segment.vaddr + load.segment.memsz));
        image.segments.push_back(load.segment);
    }
    *out = std::move(image);
    return "";
}

} // namespace

std::string parse_elf(const uint8_t *data, size_t size, ElfImage *out) {
    if (out == nullptr) {
        return "parse_elf: out is null";
    }
    if (data == nullptr && size != 0) {
        return "parse_elf: data is null";
    }
#if defined(__cpp_exceptions)
    try {
        return parse_elf_unchecked(data, size, out);
    } catch (const std::bad_alloc &) {
        // The message fits the small-string buffer, so returning it does
        // not allocate.
        return "out of memory";
    }
#else
    // NOTE: without exceptions an allocation failure aborts the process.
    return parse_elf_unchecked(data, size, out);
#endif
}

} // namespace vmm
