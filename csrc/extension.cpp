// The Python module mage_fast._C. Ops are registered with TORCH_LIBRARY(mage_fast, ...) in
// their own files and appear as torch.ops.mage_fast.*; this file only says how it was built.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", [] {
    pybind11::dict info;
#ifdef MAGE_FAST_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cpu"] = true;
    info["torch"] = TORCH_VERSION;
    return info;
  }, "How this extension was built: {'cpu': True, 'cuda': bool, 'torch': version}.");
}
