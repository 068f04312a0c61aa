#include "addon/snapshot_wrap.h"

#include "addon/addon.h"

namespace vmm::addon {

Napi::Function SnapshotWrap::define(Napi::Env env) {
    return DefineClass(env, "NativeSnapshot",
                       {
                           InstanceAccessor<&SnapshotWrap::ram_size>("ramSize"),
                           InstanceAccessor<&SnapshotWrap::memory_bytes>("memoryBytes"),
                           InstanceAccessor<&SnapshotWrap::diff_bytes>("diffBytes"),
                           InstanceAccessor<&SnapshotWrap::has_parent>("hasParent"),
                           InstanceMethod<&SnapshotWrap::hash>("hash"),
                       });
}

// Constructed only by wrap(), with the snapshot passed as an External.
SnapshotWrap::SnapshotWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<SnapshotWrap>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
        Napi::TypeError::New(info.Env(), "snapshots are created by vm.snapshot() or "
                                         "vmm.loadSnapshot()")
            .ThrowAsJavaScriptException();
        return;
    }
    auto *source = info[0].As<Napi::External<std::shared_ptr<const Snapshot>>>().Data();
    snapshot_ = *source;
}

Napi::Object SnapshotWrap::wrap(Napi::Env env, std::shared_ptr<const Snapshot> snapshot) {
    AddonData *data = env.GetInstanceData<AddonData>();
    // The External lives only for this constructor call.
    Napi::External<std::shared_ptr<const Snapshot>> external =
        Napi::External<std::shared_ptr<const Snapshot>>::New(env, &snapshot);
    return data->snapshot_class.New({external});
}

SnapshotWrap *SnapshotWrap::unwrap(Napi::Env env, Napi::Value value) {
    AddonData *data = env.GetInstanceData<AddonData>();
    if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(data->snapshot_class.Value())) {
        Napi::TypeError::New(env, "expected a NativeSnapshot").ThrowAsJavaScriptException();
        return nullptr;
    }
    return SnapshotWrap::Unwrap(value.As<Napi::Object>());
}

Napi::Value SnapshotWrap::ram_size(const Napi::CallbackInfo &info) {
    return Napi::Number::New(info.Env(), static_cast<double>(snapshot_ ? snapshot_->ram_size() : 0));
}

Napi::Value SnapshotWrap::memory_bytes(const Napi::CallbackInfo &info) {
    double bytes = snapshot_ ? static_cast<double>(snapshot_->memory()->present.count() * VMM_PAGE_SIZE) : 0;
    return Napi::Number::New(info.Env(), bytes);
}

Napi::Value SnapshotWrap::diff_bytes(const Napi::CallbackInfo &info) {
    double bytes = snapshot_ ? static_cast<double>(snapshot_->diff().count() * VMM_PAGE_SIZE) : 0;
    return Napi::Number::New(info.Env(), bytes);
}

Napi::Value SnapshotWrap::has_parent(const Napi::CallbackInfo &info) {
    return Napi::Boolean::New(info.Env(), snapshot_ && snapshot_->parent() != nullptr);
}

Napi::Value SnapshotWrap::hash(const Napi::CallbackInfo &info) {
    if (!snapshot_) {
        return info.Env().Undefined();
    }
    static const char digits[] = "0123456789abcdef";
    std::string hex;
    for (uint8_t byte : snapshot_->content_hash()) {
        hex.push_back(digits[byte >> 4]);
        hex.push_back(digits[byte & 15]);
    }
    return Napi::String::New(info.Env(), hex);
}

}  // namespace vmm::addon
