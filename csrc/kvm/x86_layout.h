// The x86-64 state the VMM gives every guest: identity page tables, GDT, TSS,
// IDT and exception stubs in the supervisor area, and the long-mode user-mode
// register state at entry.
#pragma once

#include <linux/kvm.h>

#include <cstdint>

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

// Vectors 0-31 have stubs; the IDT limit excludes the rest, so `int n` with a
// higher n raises #GP, which reaches stub 13.
constexpr unsigned kStubVectors = 32;
constexpr unsigned kStubSize = 16;

// Every stub pushes the error code (0 where the CPU pushes none), its vector
// and the guest's rdx, and writes to this port. The VMM then reads the frame
// at rsp: rdx, vector, error code, rip, cs, rflags, rsp, ss. Guest user code cannot use
// port I/O (IOPL is 0), so an exit on this port always comes from a stub.
constexpr uint16_t kStubPort = 0x0510;

constexpr uint16_t kKernelCs = 0x08;
constexpr uint16_t kKernelDs = 0x10;
constexpr uint16_t kUserDs = 0x18 | 3;
constexpr uint16_t kUserCs = 0x20 | 3;
constexpr uint16_t kTssSelector = 0x28;

// Writes the supervisor area for a guest with `ram_size` bytes of RAM into
// `low`, which covers guest physical [0, VMM_RESERVED_END). `ram_size` must be
// a validated multiple of 2 MiB no larger than VMM_RAM_MAX.
void build_supervisor_area(uint8_t *low, uint64_t ram_size);

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
