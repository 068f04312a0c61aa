// The x86-64 state the VMM gives every guest: identity page tables, GDT, TSS,
// IDT and exception stubs in the supervisor area, and the long-mode user-mode
// register state at entry.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <string>
#include <vector>

#include "vmm_abi.h"

namespace vmm::x86 {

// Guest physical layout of the supervisor area, inside [0, VMM_RESERVED_END).
constexpr uint64_t kPml4 = 0x1000;
constexpr uint64_t kPdpt = 0x2000;
constexpr uint64_t kPd0 = 0x3000;  // four page directories, one per GiB below 4 GiB
constexpr uint64_t kPtLow = 0x7000;       // 4 KiB pages of the first 2 MiB
constexpr uint64_t kPtDoorbell = 0x8000;  // 4 KiB pages of the last 2 MiB below 4 GiB
constexpr uint64_t kGdt = 0x9000;
constexpr uint64_t kTss = 0x9800;
constexpr uint64_t kIdt = 0xA000;
constexpr uint64_t kStubs = 0xB000;
constexpr uint64_t kStackBottom = 0xC000;
constexpr uint64_t kStackTop = 0xF000;
constexpr uint64_t kSupervisorEnd = 0x10000;

// Pool of 4 KiB page tables for the 2 MiB ranges of RAM above 2 MiB whose
// pages differ in access. It lies after the boot information page, and the
// guest's page tables do not map it. Each segment end can split one 2 MiB
// range, so an image with n PT_LOAD segments needs at most 2n tables.
// image.cc checks that the pool has room for two for each program header
// that parse_elf accepts.
constexpr uint64_t kPtPool = 0x11000;
constexpr uint64_t kPtPoolPages = 128;
constexpr uint64_t kPtPoolEnd = kPtPool + kPtPoolPages * VMM_PAGE_SIZE;
static_assert(kPtPool >= VMM_BOOT_INFO_ADDR + VMM_PAGE_SIZE && kPtPoolEnd <= VMM_RESERVED_END,
              "the page-table pool must lie between the boot information page and 1 MiB");

// Vectors 0-31 have stubs; the IDT limit excludes the rest, so `int n` with a
// higher n raises #GP, which reaches stub 13.
constexpr unsigned kStubVectors = 32;
constexpr unsigned kStubSize = 16;

// Every stub pushes the error code (0 where the CPU pushes none), its vector
// and the guest's rdx, and writes to this port. The VMM then reads the frame
// at rsp: rdx, vector, error code, rip, cs, rflags, rsp, ss. Guest user code cannot use
// port I/O (IOPL is 0), so an exit on this port always comes from a stub.
constexpr uint16_t kStubPort = 0x0510;

// Control registers in guest user mode. CR0: PE, MP, ET, NE, WP, AM, PG.
// CR4: PAE, OSFXSR, OSXMMEXCPT (SSE in user mode). EFER: LME, LMA, NXE, which
// makes bit 63 of a page-table entry the no-execute bit. User mode cannot
// change them.
constexpr uint64_t kCr0 = 0x80050033;
constexpr uint64_t kCr4 = 0x620;
constexpr uint64_t kEfer = 0xD00;

constexpr uint16_t kKernelCs = 0x08;
constexpr uint16_t kKernelDs = 0x10;
constexpr uint16_t kUserDs = 0x18 | 3;
constexpr uint16_t kUserCs = 0x20 | 3;
constexpr uint16_t kTssSelector = 0x28;

// User-mode access to a page of guest RAM at or above VMM_RESERVED_END. No
// access is both writable and executable. x86 paging cannot deny reads of a
// present page, so every access includes reading.
enum class PageAccess : uint8_t {
    kReadWrite,    // writable, not executable: heap, stack, .data and .bss
    kReadOnly,     // not writable, not executable: .rodata
    kReadExecute,  // executable, not writable: .text
};

// Pages [start, end) of guest RAM with one access. Both ends are multiples of
// 4 KiB.
struct PageRange {
    uint64_t start;
    uint64_t end;
    PageAccess access;
};

// Writes the supervisor area for a guest with `ram_size` bytes of RAM into
// `low`, which covers guest physical [0, VMM_RESERVED_END) and must be zero.
// RAM pages inside `ranges` get the range's access, and the other RAM pages
// at or above VMM_RESERVED_END get kReadWrite. `ranges` must be sorted,
// disjoint and inside [VMM_RESERVED_END, ram_size). A 2 MiB range of RAM
// whose pages share one access is one large page, and any other gets a 4 KiB
// page table from the pool.
// Returns an empty string on success, or the reason the ranges cannot be
// mapped: a bad RAM size or range, or more tables than the pool holds.
std::string build_supervisor_area(uint8_t *low, uint64_t ram_size,
                                  const std::vector<PageRange> &ranges);

// Reads back the RAM access that the page tables in `low` give each page at
// or above VMM_RESERVED_END, as sorted ranges of the pages that are not
// kReadWrite. `low` covers [0, VMM_RESERVED_END) and may be hostile: this
// reads nothing outside it. The tables are the engine's own only if
// build_supervisor_area() with the returned ranges reproduces them.
// Returns an empty string, or the first entry that maps RAM in a way the
// engine never does.
std::string read_page_ranges(const uint8_t *low, uint64_t ram_size,
                             std::vector<PageRange> *out);

// Fills the special registers for 64-bit user mode with paging rooted at kPml4.
void initial_sregs(kvm_sregs *sregs);

// Fills the general registers at entry: rip, rsp at the top of RAM, rdi
// pointing at the boot information block.
void initial_regs(kvm_regs *regs, uint64_t entry, uint64_t ram_size);

// True for the vectors where the CPU pushes an error code.
bool vector_has_error_code(unsigned vector);

// Short mnemonic of an exception vector ("#PF"), or "vector" for others.
const char *vector_name(unsigned vector);

}  // namespace vmm::x86
