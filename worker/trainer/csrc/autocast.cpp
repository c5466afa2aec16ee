// libtorch's autocast switches for the trainer (worker/trainer/src/precision.rs).
//
// tch 0.24 binds only the deprecated CUDA-only switch (`tch::autocast`: fp16, and a no-op
// without CUDA), so bf16 and CPU autocast need these. The functions are libtorch's own
// (ATen/autocast_mode.h). They are declared here rather than by including that header,
// which pulls in all of ATen and costs a minute of compile time per build of this crate on
// a small machine: only c10's light type headers are needed. The declarations must match
// libtorch's exactly; a change of signature fails the link with an undefined symbol.
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace at::autocast {
bool is_autocast_enabled(c10::DeviceType device_type);
void set_autocast_enabled(c10::DeviceType device_type, bool enabled);
c10::ScalarType get_autocast_dtype(c10::DeviceType device_type);
void set_autocast_dtype(c10::DeviceType device_type, c10::ScalarType dtype);
void clear_cache();
int increment_nesting();
int decrement_nesting();
}  // namespace at::autocast

namespace {
// device: 0 = cpu, 1 = cuda (anything else: cpu)
c10::DeviceType device_type(int device) { return device == 1 ? c10::DeviceType::CUDA : c10::DeviceType::CPU; }
}  // namespace

extern "C" {

// Autocast state of `device` on this thread: enabled (0/1) and the dtype as c10's ScalarType code.
int tsweep_autocast_is_enabled(int device) { return at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0; }
int tsweep_autocast_get_dtype(int device) { return static_cast<int>(at::autocast::get_autocast_dtype(device_type(device))); }

// Enables (or disables) autocast on `device` for this thread with the lower-precision dtype
// `dtype` (c10 ScalarType code: 15 = BFloat16, 5 = Half), and enters one nesting level.
void tsweep_autocast_enter(int device, int enabled, int dtype) {
  at::autocast::set_autocast_dtype(device_type(device), static_cast<c10::ScalarType>(dtype));
  at::autocast::set_autocast_enabled(device_type(device), enabled != 0);
  at::autocast::increment_nesting();
}

// Leaves one nesting level (the outermost clears the cache of weights cast in the region)
// and restores the state `tsweep_autocast_is_enabled`/`_get_dtype` read before entering.
void tsweep_autocast_exit(int device, int prev_enabled, int prev_dtype) {
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(device_type(device), prev_enabled != 0);
  at::autocast::set_autocast_dtype(device_type(device), static_cast<c10::ScalarType>(prev_dtype));
}

}  // extern "C"
