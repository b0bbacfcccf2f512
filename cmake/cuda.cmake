# The CUDA/NCCL build path. Kernels and the NCCL transport arrive with the GPU work; this file
# decides whether CUDA is built in and records it for `fusecomm check-build`.
set(FUSECOMM_CUDA_ENABLED OFF)
if(FUSECOMM_WITH_CUDA STREQUAL "1" OR FUSECOMM_WITH_CUDA STREQUAL "auto")
  include(CheckLanguage)
  check_language(CUDA)
  # auto builds CUDA only where it can also run: nvcc plus the driver library of a real GPU.
  find_library(FUSECOMM_LIBCUDA NAMES libcuda.so.1 cuda
               PATHS /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib NO_DEFAULT_PATH)
  if(CMAKE_CUDA_COMPILER AND (FUSECOMM_WITH_CUDA STREQUAL "1" OR FUSECOMM_LIBCUDA))
    set(FUSECOMM_CUDA_ENABLED ON)
  elseif(FUSECOMM_WITH_CUDA STREQUAL "1")
    message(FATAL_ERROR "FUSECOMM_WITH_CUDA=1 but no CUDA compiler (nvcc) was found")
  endif()
elseif(NOT FUSECOMM_WITH_CUDA STREQUAL "0")
  message(FATAL_ERROR "FUSECOMM_WITH_CUDA must be auto, 0 or 1 (got '${FUSECOMM_WITH_CUDA}')")
endif()

if(FUSECOMM_CUDA_ENABLED)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  file(GLOB FUSECOMM_CUDA_SOURCES CONFIGURE_DEPENDS
    ${CMAKE_CURRENT_SOURCE_DIR}/csrc/reduce/*.cu
    ${CMAKE_CURRENT_SOURCE_DIR}/csrc/engine/*.cu
    ${CMAKE_CURRENT_SOURCE_DIR}/csrc/transport/nccl/*.cc)
  if(FUSECOMM_CUDA_SOURCES)
    target_sources(fusecomm_core PRIVATE ${FUSECOMM_CUDA_SOURCES})
  endif()
  target_compile_definitions(fusecomm_core PUBLIC FUSECOMM_WITH_CUDA=1)
  # Static runtime: the installed module needs no libcudart on the library path.
  target_link_libraries(fusecomm_core PUBLIC CUDA::cudart_static)
  message(STATUS "fusecomm: CUDA path enabled (${CMAKE_CUDA_COMPILER_VERSION})")
else()
  message(STATUS "fusecomm: CUDA path disabled")
endif()
