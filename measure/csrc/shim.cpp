// What tch does not expose: the CUDA caching allocator's statistics and LibTorch's
// version and CUDA runtime. Only device-generic c10 calls, so this builds and links on a
// machine without CUDA headers (the PyPI wheel ships none) and simply reports an error
// where no CUDA device is present. Every C++ exception stops here.
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/DeviceType.h>
#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/headeronly/version.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

namespace {
void set_error(char* err, size_t len, const char* msg) {
  if (err && len) {
    std::strncpy(err, msg, len - 1);
    err[len - 1] = '\0';
  }
}
}  // namespace

extern "C" {

// Allocated bytes now and at peak since the last reset. 0 on success.
int xarena_cuda_memory(int device, int64_t* current, int64_t* peak, char* err, size_t len) {
  try {
    auto* alloc = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = alloc->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto& all = stats.allocated_bytes[0];  // StatType::AGGREGATE
    *current = all.current;
    *peak = all.peak;
    return 0;
  } catch (const std::exception& e) {
    set_error(err, len, e.what());
    return 1;
  }
}

int xarena_cuda_reset_peak(int device, char* err, size_t len) {
  try {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)
        ->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    set_error(err, len, e.what());
    return 1;
  }
}

// Device time: two timing-enabled events on the device's current stream (the stream the
// case's kernels go to). Device-generic c10::Event, so no CUDA headers are needed.
struct XarenaTimer {
  c10::Device device;
  c10::Event start;
  c10::Event stop;
  explicit XarenaTimer(c10::DeviceIndex index)
      : device(c10::DeviceType::CUDA, index),
        start(c10::DeviceType::CUDA, c10::EventFlag::BACKEND_DEFAULT),
        stop(c10::DeviceType::CUDA, c10::EventFlag::BACKEND_DEFAULT) {}
  c10::Stream stream() const {
    return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(device);
  }
};

void* xarena_cuda_timer_new(int device, char* err, size_t len) {
  try {
    return new XarenaTimer(static_cast<c10::DeviceIndex>(device));
  } catch (const std::exception& e) {
    set_error(err, len, e.what());
    return nullptr;
  }
}

void xarena_cuda_timer_free(void* timer) { delete static_cast<XarenaTimer*>(timer); }

// Records the start (which = 0) or the stop (which = 1) event on the current stream.
int xarena_cuda_timer_record(void* timer, int which, char* err, size_t len) {
  try {
    auto* t = static_cast<XarenaTimer*>(timer);
    (which == 0 ? t->start : t->stop).record(t->stream());
    return 0;
  } catch (const std::exception& e) {
    set_error(err, len, e.what());
    return 1;
  }
}

// Waits for the stop event, then writes the milliseconds between the two events.
int xarena_cuda_timer_elapsed_ms(void* timer, double* ms, char* err, size_t len) {
  try {
    auto* t = static_cast<XarenaTimer*>(timer);
    t->stop.synchronize();
    *ms = t->start.elapsedTime(t->stop);
    return 0;
  } catch (const std::exception& e) {
    set_error(err, len, e.what());
    return 1;
  }
}

// "major.minor.patch" of the headers this was built against.
const char* xarena_torch_version() {
#define XARENA_STR2(x) #x
#define XARENA_STR(x) XARENA_STR2(x)
  return XARENA_STR(TORCH_VERSION_MAJOR) "." XARENA_STR(TORCH_VERSION_MINOR) "." XARENA_STR(
      TORCH_VERSION_PATCH);
}

// CUDA runtime version LibTorch was built with (e.g. 13000), or -1 without CUDA.
long xarena_cuda_runtime_version() {
  try {
    const auto& hooks = at::detail::getCUDAHooks();
    if (!hooks.hasCUDA()) return -1;
    return hooks.versionCUDART();
  } catch (...) {
    return -1;
  }
}
}

// TF32 in LibTorch's global context, read through the per-op precision API (the legacy
// allowTF32* getters check it against the old flags and may throw or warn).
#include <ATen/Context.h>

extern "C" {
// matmul: cuBLAS float32 matrix multiplies; cudnn: cuDNN convolutions. 0 on success.
int xarena_tf32(int* matmul, int* cudnn) {
  try {
    auto& ctx = at::globalContext();
    *matmul = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
              at::Float32Precision::TF32;
    *cudnn = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV) ==
             at::Float32Precision::TF32;
    return 0;
  } catch (...) {
    return 1;
  }
}
}
