// Module entry: registers the native classes and functions.
#include "addon/addon.h"

#include <mutex>

#include "addon/engine_wrap.h"
#include "addon/errors.h"
#include "addon/image_wrap.h"
#include "addon/snapshot_io.h"
#include "addon/snapshot_wrap.h"
#include "addon/testing.h"
#include "vmm_abi.h"

namespace vmm::addon {

Status shared_kvm(std::shared_ptr<KvmSystem> *out) {
    // One /dev/kvm descriptor serves every engine in the process, including
    // engines created from worker threads.
    static std::mutex mutex;
    static std::weak_ptr<KvmSystem> cached;
    std::lock_guard<std::mutex> lock(mutex);
    std::shared_ptr<KvmSystem> sys = cached.lock();
    if (!sys) {
        std::unique_ptr<KvmSystem> opened;
        Status status = KvmSystem::open(&opened);
        if (!status.ok()) {
            return status;
        }
        sys = std::move(opened);
        cached = sys;
    }
    *out = std::move(sys);
    return Status::success();
}

namespace {

// probe(): opens /dev/kvm and checks it, throwing the coded error if it is
// unusable. Returns facts about the host.
Napi::Value probe(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::shared_ptr<KvmSystem> sys;
    Status status = shared_kvm(&sys);
    if (!status.ok()) {
        to_js_error(env, status).ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("maxMemslots", sys->max_memslots());
    out.Set("runMmapSize", static_cast<double>(sys->run_mmap_size()));
    return out;
}

Napi::Object constants(Napi::Env env) {
    Napi::Object out = Napi::Object::New(env);
    out.Set("abiVersion", VMM_ABI_VERSION);
    out.Set("ramMin", static_cast<double>(VMM_RAM_MIN));
    out.Set("ramMax", static_cast<double>(VMM_RAM_MAX));
    out.Set("ramAlign", static_cast<double>(VMM_RAM_ALIGN));
    out.Set("cmdlineMax", VMM_CMDLINE_MAX);
    out.Set("messageMax", VMM_MSG_MAX);
    out.Set("reservedEnd", static_cast<double>(VMM_RESERVED_END));
    return out;
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
    auto *data = new AddonData();
    env.SetInstanceData(data);
    Napi::Function image = ImageWrap::define(env);
    Napi::Function engine = EngineWrap::define(env);
    data->image_class = Napi::Persistent(image);
    data->engine_class = Napi::Persistent(engine);
    Napi::Function snapshot = SnapshotWrap::define(env);
    data->snapshot_class = Napi::Persistent(snapshot);
    exports.Set("NativeSnapshot", snapshot);
    exports.Set("NativeImage", image);
    exports.Set("NativeEngine", engine);
    exports.Set("probe", Napi::Function::New(env, probe));
    exports.Set("saveSnapshot", Napi::Function::New(env, save_snapshot_js));
    exports.Set("loadSnapshot", Napi::Function::New(env, load_snapshot_js));
    exports.Set("constants", constants(env));
    exports.Set("testing", testing_exports(env));
    return exports;
}

}  // namespace vmm::addon

static Napi::Object init_module(Napi::Env env, Napi::Object exports) {
    return vmm::addon::init(env, exports);
}

NODE_API_MODULE(NODE_GYP_MODULE_NAME, init_module)
