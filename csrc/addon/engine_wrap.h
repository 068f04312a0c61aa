// JS wrapper of the engine: one per VMM object.
#pragma once

#include <napi.h>

#include <atomic>
#include <memory>

#include "engine/engine.h"

namespace vmm::addon {

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
public:
    static Napi::Function define(Napi::Env env);
    explicit EngineWrap(const Napi::CallbackInfo &info);
    ~EngineWrap() override;

private:
    Napi::Value create(const Napi::CallbackInfo &info);
    Napi::Value create_clone(const Napi::CallbackInfo &info);
    Napi::Value snapshot(const Napi::CallbackInfo &info);
    Napi::Value engine_stats(const Napi::CallbackInfo &info);
    Napi::Value prewarm(const Napi::CallbackInfo &info);
    Napi::Value set_balloon(const Napi::CallbackInfo &info);
    Napi::Value balloon_stats(const Napi::CallbackInfo &info);
    Napi::Value start(const Napi::CallbackInfo &info);
    Napi::Value call(const Napi::CallbackInfo &info);
    Napi::Value kill(const Napi::CallbackInfo &info);
    Napi::Value destroy(const Napi::CallbackInfo &info);
    Napi::Value stats(const Napi::CallbackInfo &info);
    Napi::Value state(const Napi::CallbackInfo &info);
    Napi::Value shutdown(const Napi::CallbackInfo &info);
    Napi::Value ref(const Napi::CallbackInfo &info);
    Napi::Value unref(const Napi::CallbackInfo &info);

    // Stops the engine and releases the event function; safe to repeat.
    void close();

    // node-addon-api frees the hook's data after running it, so the handle
    // is cleared here and the destructor does not remove it again.
    static void cleanup_hook(EngineWrap *self) {
        self->cleanup_ = {};
        self->close();
    }

    std::shared_ptr<Engine> engine_;
    Napi::ThreadSafeFunction events_;
    bool closed_ = false;
    // Registered so that an environment that ends (process exit, worker
    // thread exit) stops the engine; removed when this object is collected,
    // since the hook holds a raw pointer to it.
    Napi::Env::CleanupHook<void (*)(EngineWrap *), EngineWrap> cleanup_;
    // Read by queued event deliveries, which may run after close().
    std::shared_ptr<std::atomic<bool>> closed_flag_ = std::make_shared<std::atomic<bool>>(false);
};

}  // namespace vmm::addon
