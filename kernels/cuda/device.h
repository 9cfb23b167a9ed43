#pragma once
// GPU discovery. Available only in CUDA builds (KVSCOPE_HAVE_CUDA); never throws.
#include <string>
#include <vector>

namespace kvscope::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  size_t total_mem = 0;
  int driver_version = 0;
  int runtime_version = 0;
};

// Empty when there is no driver or no device; `why` then says what the CUDA runtime reported.
std::vector<DeviceInfo> list_devices(std::string* why = nullptr);

}  // namespace kvscope::cuda
