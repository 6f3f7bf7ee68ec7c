# The CUDA backend: target adabldm::cuda (CUDA runtime, cuBLAS, cuBLASLt, cuDNN) when ADABLDM_CUDA allows and a
# toolkit is found. The .cuh headers under include/adabldm/**/cuda are compiled only by nvcc.
set(ADABLDM_HAS_CUDA OFF)
if(NOT ADABLDM_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "80-real;90")   # sm_80 and sm_90 code, plus compute_90 PTX for newer GPUs
    endif()
    # One CUDA runtime per process: the shared libcudart that CUDA::cudart (below) and cuBLAS / cuDNN use too.
    if(NOT DEFINED CMAKE_CUDA_RUNTIME_LIBRARY)
      set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit)
    find_path(ADABLDM_CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    find_library(ADABLDM_CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR})
    if(CUDAToolkit_FOUND AND ADABLDM_CUDNN_INCLUDE_DIR AND ADABLDM_CUDNN_LIBRARY)
      set(ADABLDM_HAS_CUDA ON)
    endif()
  endif()
  if(ADABLDM_CUDA STREQUAL "ON" AND NOT ADABLDM_HAS_CUDA)
    message(FATAL_ERROR "ADABLDM_CUDA=ON but no CUDA toolkit with cuBLAS and cuDNN was found")
  endif()
endif()

if(ADABLDM_HAS_CUDA)
  add_library(adabldm_cuda INTERFACE)
  add_library(adabldm::cuda ALIAS adabldm_cuda)
  set_target_properties(adabldm_cuda PROPERTIES EXPORT_NAME cuda)
  target_link_libraries(adabldm_cuda INTERFACE adabldm CUDA::cudart CUDA::cublas CUDA::cublasLt
                        ${ADABLDM_CUDNN_LIBRARY})
  target_include_directories(adabldm_cuda INTERFACE ${ADABLDM_CUDNN_INCLUDE_DIR})
  target_compile_definitions(adabldm_cuda INTERFACE ADABLDM_WITH_CUDA=1)
  target_compile_features(adabldm_cuda INTERFACE cuda_std_17)
  # --expt-relaxed-constexpr: the kernels call core/dtype.hpp's constexpr bit conversions (NaN patterns).
  # 20012: Eigen's defaulted __host__ __device__ members (a note about Eigen, not about this code).
  target_compile_options(adabldm_cuda INTERFACE
                         $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -diag-suppress=20012>)
  message(STATUS "adabldm: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "adabldm: CUDA backend OFF")
endif()
