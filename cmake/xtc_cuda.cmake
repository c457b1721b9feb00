# CUDA part of the build, included by the top-level CMakeLists.txt when torch has CUDA.
# Appends the CUDA sources (host glue + generated kernel instantiations) to XTC_CUDA_SOURCES and picks the target
# architectures: sm_80 (A100) and sm_90a (H100, whose 'a' variant admits Hopper-only instructions) unless
# -DXTC_CUDA_ARCHS="..." says otherwise. Regenerate the instantiations with csrc/ops/cuda/generate_kernels.py.
set(XTC_CUDA_ARCHS "80;90a" CACHE STRING "CUDA architectures of the xtc kernels (CMAKE_CUDA_ARCHITECTURES syntax)")
set(CMAKE_CUDA_ARCHITECTURES ${XTC_CUDA_ARCHS})
# nvcc takes -std=c++20 from CUDA 12 on; torch 2.14's headers in the host glue need it.
if(XTC_CXX_STANDARD GREATER_EQUAL 20 AND CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 12.0)
  message(FATAL_ERROR "xtc: torch ${Torch_VERSION} needs C++20 in the CUDA host glue; nvcc "
                      "${CMAKE_CUDA_COMPILER_VERSION} supports at most C++17 (use CUDA >= 12)")
endif()

file(GLOB _xtc_cuda_glue CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/ops/cuda/*.cu)
file(GLOB _xtc_cuda_kernels CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/ops/cuda/instantiations/*.cu)
list(APPEND XTC_CUDA_SOURCES ${_xtc_cuda_glue} ${_xtc_cuda_kernels})
# The host glue launches the Hopper (wgmma) forward only when the build holds sm_90a code.
if(XTC_CUDA_ARCHS MATCHES "90a")
  set_source_files_properties(${_xtc_cuda_glue} PROPERTIES COMPILE_DEFINITIONS XTC_CUDA_SM90A=1)
endif()
