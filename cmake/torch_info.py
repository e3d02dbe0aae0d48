"""Prints what CMakeLists.txt needs to know about the installed torch, one KEY=value per line."""
import os
import sys

import torch

base = os.path.dirname(torch.__file__)
include = [os.path.join(base, "include"), os.path.join(base, "include", "torch", "csrc", "api", "include")]
print("TORCH_VERSION=" + torch.__version__, end=";")
print("TORCH_CUDA_VERSION=" + str(torch.version.cuda), end=";")
print("TORCH_CXX11_ABI=" + str(int(torch._C._GLIBCXX_USE_CXX11_ABI)), end=";")
print("TORCH_LIB_DIR=" + os.path.join(base, "lib"), end=";")
print("TORCH_INCLUDE_DIRS=" + "|".join(include), end="")
sys.stdout.flush()
