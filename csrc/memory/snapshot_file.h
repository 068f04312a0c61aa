// Snapshot files: save a snapshot to disk and load it back.
//
// docs/snapshot-format.md describes the layout. The memory section is a
// sparse image of guest RAM, page-aligned in the file, so a loaded full
// snapshot is mapped MAP_PRIVATE straight from the file and the page cache
// is shared by every clone in every process.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "kvm/system.h"
#include "memory/snapshot.h"

namespace vmm {

// Writes `snapshot` to `path` atomically (temporary file, fsync, rename,
// fsync of the directory). A snapshot with a parent is written as a diff
// that names the parent by content hash. Codes: ERR_SNAPSHOT_WRITE.
Status save_snapshot(const Snapshot &snapshot, const KvmSystem &sys, const std::string &path);

// Reads and verifies the file at `path`. A diff file needs `parent`, whose
// content hash must match the one the file names. Nothing is loaded unless
// every check passes. Codes: ERR_SNAPSHOT_INVALID (truncated or corrupted
// file, a format version other than 2, CPU features this host lacks, a
// balloon outside guest RAM, wrong parent),
// ERR_SNAPSHOT_READ (the file cannot be opened or read).
Status load_snapshot(const KvmSystem &sys, const std::string &path,
                     std::shared_ptr<const Snapshot> parent,
                     std::shared_ptr<const Snapshot> *out);

}  // namespace vmm
