#include "addon/snapshot_io.h"

#include <memory>
#include <string>

#include "addon/addon.h"
#include "addon/errors.h"
#include "addon/snapshot_wrap.h"
#include "memory/snapshot_file.h"

namespace vmm::addon {

namespace {

class SaveWorker : public Napi::AsyncWorker {
public:
    SaveWorker(Napi::Env env, std::shared_ptr<const Snapshot> snapshot, std::string path,
               std::shared_ptr<KvmSystem> sys)
        : Napi::AsyncWorker(env),
          deferred_(Napi::Promise::Deferred::New(env)),
          snapshot_(std::move(snapshot)),
          path_(std::move(path)),
          sys_(std::move(sys)) {}

    Napi::Promise promise() { return deferred_.Promise(); }

    void Execute() override { status_ = save_snapshot(*snapshot_, *sys_, path_); }

    void OnOK() override {
        if (status_.ok()) {
            deferred_.Resolve(Env().Undefined());
        } else {
            deferred_.Reject(to_js_error(Env(), status_).Value());
        }
    }

private:
    Napi::Promise::Deferred deferred_;
    std::shared_ptr<const Snapshot> snapshot_;
    std::string path_;
    std::shared_ptr<KvmSystem> sys_;
    Status status_;
};

class LoadWorker : public Napi::AsyncWorker {
public:
    LoadWorker(Napi::Env env, std::string path, std::shared_ptr<const Snapshot> parent,
               std::shared_ptr<KvmSystem> sys)
        : Napi::AsyncWorker(env),
          deferred_(Napi::Promise::Deferred::New(env)),
          path_(std::move(path)),
          parent_(std::move(parent)),
          sys_(std::move(sys)) {}

    Napi::Promise promise() { return deferred_.Promise(); }

    void Execute() override { status_ = load_snapshot(*sys_, path_, parent_, &result_); }

    void OnOK() override {
        if (status_.ok()) {
            deferred_.Resolve(SnapshotWrap::wrap(Env(), result_));
        } else {
            deferred_.Reject(to_js_error(Env(), status_).Value());
        }
    }

private:
    Napi::Promise::Deferred deferred_;
    std::string path_;
    std::shared_ptr<const Snapshot> parent_;
    std::shared_ptr<KvmSystem> sys_;
    Status status_;
    std::shared_ptr<const Snapshot> result_;
};

bool kvm_or_throw(Napi::Env env, std::shared_ptr<KvmSystem> *sys) {
    Status status = shared_kvm(sys);
    if (!status.ok()) {
        to_js_error(env, status).ThrowAsJavaScriptException();
        return false;
    }
    return true;
}

}  // namespace

Napi::Value save_snapshot_js(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    SnapshotWrap *snapshot = info.Length() > 0 ? SnapshotWrap::unwrap(env, info[0]) : nullptr;
    if (snapshot == nullptr) {
        return env.Undefined();
    }
    if (info.Length() < 2 || !info[1].IsString()) {
        Napi::TypeError::New(env, "expected a path").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    std::shared_ptr<KvmSystem> sys;
    if (!kvm_or_throw(env, &sys)) {
        return env.Undefined();
    }
    auto *worker = new SaveWorker(env, snapshot->snapshot(), info[1].As<Napi::String>().Utf8Value(),
                                  std::move(sys));
    Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
}

Napi::Value load_snapshot_js(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) {
        Napi::TypeError::New(env, "expected a path").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    std::shared_ptr<const Snapshot> parent;
    if (info.Length() > 1 && !info[1].IsNull() && !info[1].IsUndefined()) {
        SnapshotWrap *wrap = SnapshotWrap::unwrap(env, info[1]);
        if (wrap == nullptr) {
            return env.Undefined();
        }
        parent = wrap->snapshot();
    }
    std::shared_ptr<KvmSystem> sys;
    if (!kvm_or_throw(env, &sys)) {
        return env.Undefined();
    }
    auto *worker = new LoadWorker(env, info[0].As<Napi::String>().Utf8Value(), std::move(parent),
                                  std::move(sys));
    Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
}

}  // namespace vmm::addon
