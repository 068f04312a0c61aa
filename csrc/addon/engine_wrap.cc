#include "addon/engine_wrap.h"

#include <atomic>
#include <string>

#include "addon/addon.h"
#include "addon/errors.h"
#include "addon/image_wrap.h"
#include "addon/snapshot_wrap.h"
#include "vmm_abi.h"

namespace vmm::addon {

namespace {

const char *event_type_name(EventType type) {
    switch (type) {
    case EventType::kStarted: return "started";
    case EventType::kStartFailed: return "startFailed";
    case EventType::kConsole: return "console";
    case EventType::kReply: return "reply";
    case EventType::kCallFailed: return "callFailed";
    case EventType::kExit: return "exit";
    case EventType::kSnapshot: return "snapshot";
    case EventType::kSnapshotFailed: return "snapshotFailed";
    case EventType::kPrewarmed: return "prewarmed";
    case EventType::kPrewarmFailed: return "prewarmFailed";
    }
    return "unknown";
}

std::string hex(uint64_t value) { return format("0x%llx", static_cast<unsigned long long>(value)); }

Napi::Object exit_to_js(Napi::Env env, const ExitInfo &exit) {
    Napi::Object out = Napi::Object::New(env);
    out.Set("code", exit.code);
    out.Set("reason", exit.reason);
    out.Set("message", exit.message);
    if (!exit.exit_name.empty()) {
        out.Set("exitName", exit.exit_name);
    }
    if (exit.has_exception) {
        out.Set("vector", static_cast<double>(exit.vector));
        out.Set("errorCode", static_cast<double>(exit.error_code));
        out.Set("cr2", hex(exit.cr2));
    }
    if (exit.has_regs || exit.has_exception) {
        out.Set("rip", hex(exit.rip));
    }
    if (exit.has_regs) {
        const kvm_regs &r = exit.regs;
        Napi::Object regs = Napi::Object::New(env);
        const std::pair<const char *, uint64_t> fields[] = {
            {"rax", r.rax}, {"rbx", r.rbx}, {"rcx", r.rcx}, {"rdx", r.rdx},
            {"rsi", r.rsi}, {"rdi", r.rdi}, {"rsp", r.rsp}, {"rbp", r.rbp},
            {"r8", r.r8},   {"r9", r.r9},   {"r10", r.r10}, {"r11", r.r11},
            {"r12", r.r12}, {"r13", r.r13}, {"r14", r.r14}, {"r15", r.r15},
            {"rip", r.rip}, {"rflags", r.rflags}};
        for (const auto &field : fields) {
            regs.Set(field.first, hex(field.second));
        }
        out.Set("registers", regs);
    }
    return out;
}

// Runs on the main thread: drains the engine's events into one JS array.
void deliver(Napi::Env env, Napi::Function callback, const std::shared_ptr<Engine> &engine) {
    std::vector<Event> events = engine->drain_events();
    if (events.empty() || env == nullptr || callback.IsEmpty()) {
        return;
    }
    Napi::HandleScope scope(env);
    Napi::Array list = Napi::Array::New(env, events.size());
    uint32_t index = 0;
    for (Event &event : events) {
        Napi::Object out = Napi::Object::New(env);
        out.Set("type", event_type_name(event.type));
        out.Set("vm", static_cast<double>(event.vm_id));
        switch (event.type) {
        case EventType::kConsole: {
            std::string text;
            engine->take_console(event.vm_id, &text);
            out.Set("data", Napi::Buffer<char>::Copy(env, text.data(), text.size()));
            break;
        }
        case EventType::kReply:
            out.Set("call", static_cast<double>(event.call_id));
            out.Set("data", Napi::Buffer<uint8_t>::Copy(env, event.data.data(), event.data.size()));
            break;
        case EventType::kCallFailed:
            out.Set("call", static_cast<double>(event.call_id));
            out.Set("error", to_js_error_object(env, event.error));
            break;
        case EventType::kStartFailed:
            out.Set("error", to_js_error_object(env, event.error));
            break;
        case EventType::kExit:
            out.Set("exit", exit_to_js(env, *event.exit));
            break;
        case EventType::kSnapshot:
            out.Set("request", static_cast<double>(event.call_id));
            out.Set("snapshot", SnapshotWrap::wrap(env, event.snapshot));
            break;
        case EventType::kSnapshotFailed:
            out.Set("request", static_cast<double>(event.call_id));
            out.Set("error", to_js_error_object(env, event.error));
            break;
        case EventType::kPrewarmed:
            out.Set("request", static_cast<double>(event.call_id));
            break;
        case EventType::kPrewarmFailed:
            out.Set("request", static_cast<double>(event.call_id));
            out.Set("error", to_js_error_object(env, event.error));
            break;
        case EventType::kStarted:
            break;
        }
        list.Set(index++, out);
    }
    callback.Call({list});
}

bool get_id(const Napi::CallbackInfo &info, size_t index, uint64_t *out) {
    if (info.Length() <= index || !info[index].IsNumber()) {
        Napi::TypeError::New(info.Env(), "expected a VM id").ThrowAsJavaScriptException();
        return false;
    }
    double value = info[index].As<Napi::Number>().DoubleValue();
    if (!(value >= 0 && value <= 9007199254740991.0)) {
        Napi::RangeError::New(info.Env(), "VM id out of range").ThrowAsJavaScriptException();
        return false;
    }
    *out = static_cast<uint64_t>(value);
    return true;
}

}  // namespace

Napi::Function EngineWrap::define(Napi::Env env) {
    return DefineClass(env, "NativeEngine",
                       {
                           InstanceMethod<&EngineWrap::create>("create"),
                           InstanceMethod<&EngineWrap::create_clone>("createClone"),
                           InstanceMethod<&EngineWrap::snapshot>("snapshot"),
                           InstanceMethod<&EngineWrap::engine_stats>("engineStats"),
                           InstanceMethod<&EngineWrap::prewarm>("prewarm"),
                           InstanceMethod<&EngineWrap::set_balloon>("setBalloon"),
                           InstanceMethod<&EngineWrap::balloon_stats>("balloonStats"),
                           InstanceMethod<&EngineWrap::start>("start"),
                           InstanceMethod<&EngineWrap::call>("call"),
                           InstanceMethod<&EngineWrap::kill>("kill"),
                           InstanceMethod<&EngineWrap::destroy>("destroy"),
                           InstanceMethod<&EngineWrap::stats>("stats"),
                           InstanceMethod<&EngineWrap::state>("state"),
                           InstanceMethod<&EngineWrap::shutdown>("shutdown"),
                           InstanceMethod<&EngineWrap::ref>("ref"),
                           InstanceMethod<&EngineWrap::unref>("unref"),
                       });
}

// new NativeEngine({ workers, sliceMs, poolSize }, onEvents). The TypeScript layer has
// validated the options; these checks only keep bad values out of C++.
EngineWrap::EngineWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
        Napi::TypeError::New(env, "expected (options, onEvents)").ThrowAsJavaScriptException();
        return;
    }
    Napi::Object options = info[0].As<Napi::Object>();
    EngineOptions engine_options;
    Napi::Value workers = options.Get("workers");
    Napi::Value slice = options.Get("sliceMs");
    Napi::Value pool = options.Get("poolSize");
    Napi::Value max_resident = options.Get("maxResident");
    Napi::Value idle = options.Get("idleMs");
    if (workers.IsNumber()) {
        double n = workers.As<Napi::Number>().DoubleValue();
        if (!(n >= 1 && n <= 256)) {
            Napi::RangeError::New(env, "workers must be 1-256").ThrowAsJavaScriptException();
            return;
        }
        engine_options.workers = static_cast<unsigned>(n);
    }
    if (slice.IsNumber()) {
        double ms = slice.As<Napi::Number>().DoubleValue();
        if (!(ms >= 1 && ms <= 60000)) {
            Napi::RangeError::New(env, "sliceMs must be 1-60000").ThrowAsJavaScriptException();
            return;
        }
        engine_options.slice_ms = static_cast<uint64_t>(ms);
    }
    if (pool.IsNumber()) {
        double n = pool.As<Napi::Number>().DoubleValue();
        if (!(n >= 0 && n <= 100000)) {
            Napi::RangeError::New(env, "poolSize must be 0-100000").ThrowAsJavaScriptException();
            return;
        }
        engine_options.pool_size = static_cast<unsigned>(n);
    }
    if (max_resident.IsNumber()) {
        double n = max_resident.As<Napi::Number>().DoubleValue();
        if (!(n >= 0 && n <= 100000)) {
            Napi::RangeError::New(env, "maxResident must be 0-100000").ThrowAsJavaScriptException();
            return;
        }
        engine_options.max_resident = static_cast<uint64_t>(n);
    }
    if (idle.IsNumber()) {
        double ms = idle.As<Napi::Number>().DoubleValue();
        if (!(ms >= 0 && ms <= 86400000)) {
            Napi::RangeError::New(env, "idleMs must be 0-86400000").ThrowAsJavaScriptException();
            return;
        }
        engine_options.idle_ms = static_cast<uint64_t>(ms);
    }

    std::shared_ptr<KvmSystem> sys;
    Status status = shared_kvm(&sys);
    if (!status.ok()) {
        to_js_error(env, status).ThrowAsJavaScriptException();
        return;
    }

    events_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "vmm-events", 0, 1);
    // Unreferenced until the TypeScript layer has a VM that is alive.
    events_.Unref(env);

    // The notify callback captures only the TSFN handle; the engine pointer
    // reaches the main thread through a weak_ptr so a late call after close
    // finds nothing to deliver.
    auto weak = std::make_shared<std::weak_ptr<Engine>>();
    Napi::ThreadSafeFunction tsfn = events_;
    std::shared_ptr<std::atomic<bool>> closed = closed_flag_;
    engine_ = std::make_shared<Engine>(std::move(sys), engine_options, [tsfn, weak, closed]() mutable {
        std::weak_ptr<Engine> target = *weak;
        tsfn.NonBlockingCall([target, closed](Napi::Env env, Napi::Function callback) {
            // After close() the environment may be tearing down, where
            // calling into JavaScript is not allowed; drop the batch.
            if (closed->load(std::memory_order_acquire)) {
                return;
            }
            if (std::shared_ptr<Engine> engine = target.lock()) {
                deliver(env, callback, engine);
            }
        });
    });
    *weak = engine_;

    cleanup_ = env.AddCleanupHook(&EngineWrap::cleanup_hook, this);
}

EngineWrap::~EngineWrap() {
    if (!cleanup_.IsEmpty()) {
        cleanup_.Remove(Env());
    }
    close();
}

void EngineWrap::close() {
    if (closed_) {
        return;
    }
    closed_ = true;
    closed_flag_->store(true, std::memory_order_release);
    if (engine_) {
        engine_->shutdown();
    }
    if (events_) {
        events_.Release();
    }
}

Napi::Value EngineWrap::create(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ImageWrap *image = info.Length() > 0 ? ImageWrap::unwrap(env, info[0]) : nullptr;
    if (image == nullptr) {
        if (!env.IsExceptionPending()) {
            Napi::TypeError::New(env, "expected a NativeImage").ThrowAsJavaScriptException();
        }
        return env.Undefined();
    }
    if (info.Length() < 3 || !info[1].IsNumber() || !info[2].IsString()) {
        Napi::TypeError::New(env, "expected (image, ramSize, cmdline)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    double ram = info[1].As<Napi::Number>().DoubleValue();
    std::string cmdline = info[2].As<Napi::String>().Utf8Value();
    uint64_t ram_size = static_cast<uint64_t>(ram);
    if (!(ram >= static_cast<double>(VMM_RAM_MIN) && ram <= static_cast<double>(VMM_RAM_MAX)) ||
        ram_size % VMM_RAM_ALIGN != 0 || ram_size < image->image()->load_end()) {
        Napi::RangeError::New(env, "ramSize is invalid for this image").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (cmdline.size() >= VMM_CMDLINE_MAX) {
        Napi::RangeError::New(env, "cmdline is too long").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (closed_) {
        to_js_error(env, Status::failure("ERR_VMM_CLOSED", "the VMM is closed"))
            .ThrowAsJavaScriptException();
        return env.Undefined();
    }
    uint64_t id = engine_->create(image->image(), ram_size, std::move(cmdline));
    return Napi::Number::New(env, static_cast<double>(id));
}

Napi::Value EngineWrap::create_clone(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    SnapshotWrap *snapshot = info.Length() > 0 ? SnapshotWrap::unwrap(env, info[0]) : nullptr;
    if (snapshot == nullptr) {
        if (!env.IsExceptionPending()) {
            Napi::TypeError::New(env, "expected a NativeSnapshot").ThrowAsJavaScriptException();
        }
        return env.Undefined();
    }
    if (closed_) {
        to_js_error(env, Status::failure("ERR_VMM_CLOSED", "the VMM is closed"))
            .ThrowAsJavaScriptException();
        return env.Undefined();
    }
    uint64_t id = engine_->create_clone(snapshot->snapshot());
    return Napi::Number::New(env, static_cast<double>(id));
}

Napi::Value EngineWrap::snapshot(const Napi::CallbackInfo &info) {
    uint64_t id;
    uint64_t request;
    if (!get_id(info, 0, &id) || !get_id(info, 1, &request)) {
        return info.Env().Undefined();
    }
    Status status = engine_->snapshot(id, request);
    if (!status.ok()) {
        to_js_error(info.Env(), status).ThrowAsJavaScriptException();
    }
    return info.Env().Undefined();
}

Napi::Value EngineWrap::prewarm(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    SnapshotWrap *snapshot = info.Length() > 0 ? SnapshotWrap::unwrap(env, info[0]) : nullptr;
    uint64_t count;
    uint64_t request;
    if (snapshot == nullptr || !get_id(info, 1, &count) || !get_id(info, 2, &request)) {
        return env.Undefined();
    }
    Status status = engine_->prewarm(snapshot->snapshot(), count, request);
    if (!status.ok()) {
        to_js_error(env, status).ThrowAsJavaScriptException();
    }
    return env.Undefined();
}

Napi::Value EngineWrap::set_balloon(const Napi::CallbackInfo &info) {
    uint64_t id;
    uint64_t pages;
    if (!get_id(info, 0, &id) || !get_id(info, 1, &pages)) {
        return info.Env().Undefined();
    }
    Status status = engine_->set_balloon(id, pages);
    if (!status.ok()) {
        to_js_error(info.Env(), status).ThrowAsJavaScriptException();
    }
    return info.Env().Undefined();
}

Napi::Value EngineWrap::balloon_stats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    uint64_t id;
    if (!get_id(info, 0, &id)) {
        return env.Undefined();
    }
    BalloonStats stats;
    Status status = engine_->balloon_stats(id, &stats);
    if (!status.ok()) {
        to_js_error(env, status).ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("targetBytes", static_cast<double>(stats.target_bytes));
    out.Set("actualBytes", static_cast<double>(stats.actual_bytes));
    out.Set("reclaimedBytes", static_cast<double>(stats.reclaimed_bytes));
    out.Set("reportedFreeBytes", static_cast<double>(stats.reported_free_bytes));
    out.Set("invalidFrames", static_cast<double>(stats.invalid_frames));
    return out;
}

Napi::Value EngineWrap::engine_stats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    EngineStats stats = engine_->engine_stats();
    Napi::Object out = Napi::Object::New(env);
    out.Set("vms", static_cast<double>(stats.vms));
    out.Set("created", static_cast<double>(stats.created));
    out.Set("running", static_cast<double>(stats.running));
    out.Set("waiting", static_cast<double>(stats.waiting));
    out.Set("hibernated", static_cast<double>(stats.hibernated));
    out.Set("residentContexts", static_cast<double>(stats.resident_contexts));
    out.Set("maxResident", static_cast<double>(stats.max_resident));
    out.Set("maxResidentReached", static_cast<double>(stats.max_resident_reached));
    out.Set("pageStoreBytes", static_cast<double>(stats.page_store_bytes));
    out.Set("hibernations", static_cast<double>(stats.hibernations));
    out.Set("wakes", static_cast<double>(stats.wakes));
    Napi::Array histogram = Napi::Array::New(env, 24);
    for (uint32_t i = 0; i < 24; i++) {
        histogram.Set(i, static_cast<double>(stats.wake_histogram[i]));
    }
    out.Set("wakeHistogram", histogram);
    out.Set("exited", static_cast<double>(stats.exited));
    out.Set("pooledContexts", static_cast<double>(stats.pooled_contexts));
    out.Set("privateBytes", static_cast<double>(stats.private_bytes));
    out.Set("sharedBytes", static_cast<double>(stats.shared_bytes));
    return out;
}

// start(id, callIds?, payloads?): the optional arrays are messages that the
// first run serves, in order, as if call() had sent them right after start.
Napi::Value EngineWrap::start(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    uint64_t id;
    if (!get_id(info, 0, &id)) {
        return env.Undefined();
    }
    std::vector<Message> first;
    if (info.Length() >= 3 && !info[1].IsUndefined()) {
        if (!info[1].IsArray() || !info[2].IsArray() ||
            info[1].As<Napi::Array>().Length() != info[2].As<Napi::Array>().Length()) {
            Napi::TypeError::New(env, "expected (id, callIds, payloads) with arrays of one length")
                .ThrowAsJavaScriptException();
            return env.Undefined();
        }
        Napi::Array ids = info[1].As<Napi::Array>();
        Napi::Array payloads = info[2].As<Napi::Array>();
        for (uint32_t i = 0; i < ids.Length(); i++) {
            Napi::Value call_id = ids.Get(i);
            Napi::Value payload = payloads.Get(i);
            if (!call_id.IsNumber() || !payload.IsTypedArray() ||
                payload.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
                payload.As<Napi::TypedArray>().ByteLength() > VMM_MSG_MAX) {
                Napi::TypeError::New(env, "each first message must be a call id and a Uint8Array of "
                                          "at most 65536 bytes")
                    .ThrowAsJavaScriptException();
                return env.Undefined();
            }
            double value = call_id.As<Napi::Number>().DoubleValue();
            if (!(value >= 0 && value <= 9007199254740991.0)) {
                Napi::RangeError::New(env, "call id out of range").ThrowAsJavaScriptException();
                return env.Undefined();
            }
            Napi::Uint8Array bytes = payload.As<Napi::Uint8Array>();
            first.push_back(Message{static_cast<uint64_t>(value),
                                    std::vector<uint8_t>(bytes.Data(), bytes.Data() + bytes.ByteLength())});
        }
    }
    Status status = engine_->start(id, std::move(first));
    if (!status.ok()) {
        to_js_error(info.Env(), status).ThrowAsJavaScriptException();
    }
    return info.Env().Undefined();
}

Napi::Value EngineWrap::call(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    uint64_t id;
    uint64_t call_id;
    if (!get_id(info, 0, &id) || !get_id(info, 1, &call_id)) {
        return env.Undefined();
    }
    if (info.Length() < 3 || !info[2].IsTypedArray()) {
        Napi::TypeError::New(env, "payload must be a Uint8Array").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::TypedArray typed = info[2].As<Napi::TypedArray>();
    if (typed.TypedArrayType() != napi_uint8_array || typed.ByteLength() > VMM_MSG_MAX) {
        Napi::RangeError::New(env, "payload must be a Uint8Array of at most 65536 bytes")
            .ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Uint8Array bytes = typed.As<Napi::Uint8Array>();
    std::vector<uint8_t> data(bytes.Data(), bytes.Data() + bytes.ByteLength());
    Status status = engine_->call(id, call_id, std::move(data));
    if (!status.ok()) {
        to_js_error(env, status).ThrowAsJavaScriptException();
    }
    return env.Undefined();
}

Napi::Value EngineWrap::kill(const Napi::CallbackInfo &info) {
    uint64_t id;
    if (!get_id(info, 0, &id)) {
        return info.Env().Undefined();
    }
    Status status = engine_->kill(id);
    if (!status.ok()) {
        to_js_error(info.Env(), status).ThrowAsJavaScriptException();
    }
    return info.Env().Undefined();
}

Napi::Value EngineWrap::destroy(const Napi::CallbackInfo &info) {
    uint64_t id;
    if (get_id(info, 0, &id)) {
        engine_->destroy(id);
    }
    return info.Env().Undefined();
}

Napi::Value EngineWrap::stats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    uint64_t id;
    if (!get_id(info, 0, &id)) {
        return env.Undefined();
    }
    VmStats stats{};
    Status status = engine_->stats(id, &stats);
    if (!status.ok()) {
        to_js_error(env, status).ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("state", vm_state_name(stats.state));
    out.Set("exits", static_cast<double>(stats.exits));
    out.Set("hypercalls", static_cast<double>(stats.hypercalls));
    out.Set("hypercallErrors", static_cast<double>(stats.hypercall_errors));
    out.Set("calls", static_cast<double>(stats.calls));
    out.Set("replies", static_cast<double>(stats.replies));
    out.Set("runNs", static_cast<double>(stats.run_ns));
    out.Set("consoleBytes", static_cast<double>(stats.console_bytes));
    out.Set("consoleDroppedBytes", static_cast<double>(stats.console_dropped));
    out.Set("privateBytes", static_cast<double>(stats.private_bytes));
    out.Set("sharedBytes", static_cast<double>(stats.shared_bytes));
    out.Set("memoryBytes", static_cast<double>(stats.ram_size));
    return out;
}

Napi::Value EngineWrap::state(const Napi::CallbackInfo &info) {
    uint64_t id;
    if (!get_id(info, 0, &id)) {
        return info.Env().Undefined();
    }
    VmState state;
    if (!engine_->state(id, &state)) {
        return Napi::String::New(info.Env(), "destroyed");
    }
    return Napi::String::New(info.Env(), vm_state_name(state));
}

Napi::Value EngineWrap::shutdown(const Napi::CallbackInfo &info) {
    close();
    return info.Env().Undefined();
}

Napi::Value EngineWrap::ref(const Napi::CallbackInfo &info) {
    if (!closed_) {
        events_.Ref(info.Env());
    }
    return info.Env().Undefined();
}

Napi::Value EngineWrap::unref(const Napi::CallbackInfo &info) {
    if (!closed_) {
        events_.Unref(info.Env());
    }
    return info.Env().Undefined();
}

}  // namespace vmm::addon
