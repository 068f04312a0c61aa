// JS wrapper of an immutable snapshot.
#pragma once

#include <napi.h>

#include <memory>

#include "memory/snapshot.h"

namespace vmm::addon {

class SnapshotWrap : public Napi::ObjectWrap<SnapshotWrap> {
public:
    static Napi::Function define(Napi::Env env);
    explicit SnapshotWrap(const Napi::CallbackInfo &info);

    // Wraps `snapshot` in a new JS object.
    static Napi::Object wrap(Napi::Env env, std::shared_ptr<const Snapshot> snapshot);
    // Returns the wrapper in `value`, or nullptr after throwing a TypeError.
    static SnapshotWrap *unwrap(Napi::Env env, Napi::Value value);

    const std::shared_ptr<const Snapshot> &snapshot() const { return snapshot_; }

private:
    Napi::Value ram_size(const Napi::CallbackInfo &info);
    Napi::Value memory_bytes(const Napi::CallbackInfo &info);
    Napi::Value diff_bytes(const Napi::CallbackInfo &info);
    Napi::Value has_parent(const Napi::CallbackInfo &info);
    Napi::Value hash(const Napi::CallbackInfo &info);

    std::shared_ptr<const Snapshot> snapshot_;
};

}  // namespace vmm::addon
