// Validation of guest ELF images.
//
// A guest is an ELF64 x86-64 static executable. The host copies each PT_LOAD
// segment to guest address p_vaddr (guest virtual addresses equal guest
// physical addresses) and zero-fills p_memsz beyond p_filesz. parse_elf treats
// the file as hostile input and checks every offset, size and address in it
// before the host copies anything.
#ifndef VMM_MEMORY_ELF_H
#define VMM_MEMORY_ELF_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace vmm {

// Values of p_flags that ElfSegment::flags keeps. parse_elf drops other bits.
constexpr uint32_t kElfPfX = 0x1; // PF_X
constexpr uint32_t kElfPfW = 0x2; // PF_W
constexpr uint32_t kElfPfR = 0x4; // PF_R

// The maximum number of program headers that parse_elf accepts. A static glibc executable
// linked by GNU ld 2.40 has 10. The cap bounds the work done on a hostile
// file and rules out PN_XNUM (0xffff).
constexpr uint16_t kElfMaxProgramHeaders = 64;

// One PT_LOAD segment: copy filesz bytes from file offset `offset` to guest
// address vaddr, then zero-fill up to vaddr + memsz.
struct ElfSegment {
    uint64_t vaddr;
    uint64_t memsz;
    uint64_t offset;
    uint64_t filesz;
    uint32_t flags; // PF_X | PF_W | PF_R bits of p_flags, never both PF_W and PF_X
};

struct ElfImage {
    uint64_t entry;
    uint32_t abi_version; // descriptor of the ABI note
    uint64_t load_end;    // highest vaddr + memsz, rounded up to 4 KiB
    std::vector<ElfSegment> segments; // PT_LOAD segments with p_memsz > 0, sorted by vaddr
};

// Validates the ELF image in data[0, size) and fills *out. Returns an empty
// string on success. On failure returns one sentence that names the failed
// check and the offending value, and leaves *out unchanged. Segments are
// named by their index in the program header table, as readelf numbers them,
// e.g. "PT_LOAD 1: p_filesz 0x2000 is larger than p_memsz 0x1000".
// Reads nothing outside data[0, size) and throws no exception.
std::string parse_elf(const uint8_t *data, size_t size, ElfImage *out);

} // namespace vmm

#endif // VMM_MEMORY_ELF_H
