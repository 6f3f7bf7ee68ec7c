# The CUDA backend's usage requirements, shared by the build tree (cmake/adabldmCuda.cmake) and the installed
# package (adabldmConfig.cmake): nvcc compiles the .cuh headers; the program links the CUDA runtime, cuBLAS,
# cuBLASLt and cuDNN.

# adabldm_find_cuda_libraries(): CUDAToolkit and cuDNN; sets ADABLDM_CUDA_LIBRARIES_FOUND.
macro(adabldm_find_cuda_libraries)
  find_package(CUDAToolkit QUIET)
  find_path(ADABLDM_CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(ADABLDM_CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR})
  if(CUDAToolkit_FOUND AND ADABLDM_CUDNN_INCLUDE_DIR AND ADABLDM_CUDNN_LIBRARY)
    set(ADABLDM_CUDA_LIBRARIES_FOUND ON)
  else()
    set(ADABLDM_CUDA_LIBRARIES_FOUND OFF)
  endif()
endmacro()

# adabldm_cuda_usage(<target>): the usage requirements of adabldm::cuda on an INTERFACE (or INTERFACE IMPORTED)
# target.
function(adabldm_cuda_usage target)
  target_link_libraries(${target} INTERFACE adabldm::adabldm CUDA::cudart CUDA::cublas CUDA::cublasLt
                        ${ADABLDM_CUDNN_LIBRARY})
  target_include_directories(${target} INTERFACE ${ADABLDM_CUDNN_INCLUDE_DIR})
  target_compile_definitions(${target} INTERFACE ADABLDM_WITH_CUDA=1)
  target_compile_features(${target} INTERFACE cuda_std_17)
  # --expt-relaxed-constexpr: the kernels call core/dtype.hpp's constexpr bit conversions (NaN patterns).
  # 20012: Eigen's defaulted __host__ __device__ members (a note about Eigen, not about this code).
  target_compile_options(${target} INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -diag-suppress=20012>)
endfunction()
