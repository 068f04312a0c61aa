// saveSnapshot() and loadSnapshot(): file I/O on the libuv thread pool,
// which never runs KVM_RUN.
#pragma once

#include <napi.h>

namespace vmm::addon {

// saveSnapshot(snapshot, path) -> Promise<void>
Napi::Value save_snapshot_js(const Napi::CallbackInfo &info);

// loadSnapshot(path, parent | null) -> Promise<NativeSnapshot>
Napi::Value load_snapshot_js(const Napi::CallbackInfo &info);

}  // namespace vmm::addon
