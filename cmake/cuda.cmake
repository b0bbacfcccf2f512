# The CUDA/NCCL build path: CUDA kernels (csrc/reduce/*.cu, csrc/engine/*.cu), device memory
# (csrc/transport/cuda_*.cc) and the NCCL transport (csrc/transport/nccl/*.cc).
#
# FUSECOMM_WITH_CUDA: auto builds it where it can also run (nvcc, the driver library of a real
# GPU, and NCCL's header); 1 forces it (a machine without a GPU compiles and links it: that is
# how CI keeps it from rotting); 0 never.
#
# NCCL: only its header is needed to build; libnccl.so.2 is loaded at run time (see
# csrc/transport/nccl/nccl_api.h for where it is looked for). The header comes from, in order:
# -DNCCL_HOME= or $NCCL_HOME (include/nccl.h), the nvidia-nccl wheel of the Python running the
# build (pip install nvidia-nccl-cu13; with `pip install .` that is the isolated build
# environment, so pass NCCL_HOME or use --no-build-isolation), then the CUDA toolkit and system
# include directories.
set(FUSECOMM_CUDA_ENABLED OFF)

function(fusecomm_find_nccl_home out_var)
  set(candidates "${NCCL_HOME}" "$ENV{NCCL_HOME}")
  if(Python_EXECUTABLE)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
              "import nvidia.nccl as n; print(list(n.__path__)[0])"
      OUTPUT_VARIABLE wheel_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    list(APPEND candidates "${wheel_dir}")
  endif()
  list(APPEND candidates "${CUDAToolkit_LIBRARY_ROOT}" /usr/local/cuda /usr)
  foreach(dir ${candidates})
    if(dir AND EXISTS "${dir}/include/nccl.h")
      set(${out_var} "${dir}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out_var} "" PARENT_SCOPE)
endfunction()

if(FUSECOMM_WITH_CUDA STREQUAL "1" OR FUSECOMM_WITH_CUDA STREQUAL "auto")
  include(CheckLanguage)
  check_language(CUDA)
  # auto builds CUDA only where it can also run: nvcc plus the driver library of a real GPU.
  find_library(FUSECOMM_LIBCUDA NAMES libcuda.so.1 cuda
               PATHS /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib NO_DEFAULT_PATH)
  fusecomm_find_nccl_home(FUSECOMM_NCCL_HOME)
  if(CMAKE_CUDA_COMPILER AND FUSECOMM_NCCL_HOME AND
     (FUSECOMM_WITH_CUDA STREQUAL "1" OR FUSECOMM_LIBCUDA))
    set(FUSECOMM_CUDA_ENABLED ON)
  elseif(FUSECOMM_WITH_CUDA STREQUAL "1" AND NOT CMAKE_CUDA_COMPILER)
    message(FATAL_ERROR "FUSECOMM_WITH_CUDA=1 but no CUDA compiler (nvcc) was found")
  elseif(FUSECOMM_WITH_CUDA STREQUAL "1")
    message(FATAL_ERROR "FUSECOMM_WITH_CUDA=1 but NCCL's header (nccl.h) was not found: "
                        "pip install nvidia-nccl-cu13 into the building Python, or set NCCL_HOME")
  elseif(CMAKE_CUDA_COMPILER AND FUSECOMM_LIBCUDA)
    message(STATUS "fusecomm: nvcc and a GPU driver found but no nccl.h; CUDA path disabled "
                   "(pip install nvidia-nccl-cu13 or set NCCL_HOME)")
  endif()
elseif(NOT FUSECOMM_WITH_CUDA STREQUAL "0")
  message(FATAL_ERROR "FUSECOMM_WITH_CUDA must be auto, 0 or 1 (got '${FUSECOMM_WITH_CUDA}')")
endif()

if(FUSECOMM_CUDA_ENABLED)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  # Each device source joins its layer's library.
  file(GLOB cuda_reduce CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/reduce/*.cu)
  file(GLOB cuda_transport CONFIGURE_DEPENDS
    ${CMAKE_CURRENT_SOURCE_DIR}/csrc/transport/cuda_*.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/csrc/transport/nccl/*.cc)
  file(GLOB cuda_engine CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/engine/*.cu)
  foreach(layer reduce transport engine)
    if(NOT cuda_${layer})
      continue()
    endif()
    target_sources(fusecomm_${layer} PRIVATE ${cuda_${layer}})
    # Explicit -gencode flags instead of CMake's architecture list:
    # sm_80 (A100) and sm_90 (H100/H200) machine code, plus compute_90 PTX for newer GPUs.
    target_compile_options(fusecomm_${layer} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_80,code=sm_80
                                 -gencode=arch=compute_90,code=[sm_90,compute_90]>)
    set_target_properties(fusecomm_${layer} PROPERTIES CUDA_ARCHITECTURES OFF)
  endforeach()
  # Every layer compiles its CUDA branches: defined on the lowest, inherited by all above.
  target_compile_definitions(fusecomm_common PUBLIC FUSECOMM_WITH_CUDA=1)
  target_compile_definitions(fusecomm_transport PRIVATE
    FUSECOMM_NCCL_BUILD_LIBDIR="${FUSECOMM_NCCL_HOME}/lib")
  target_include_directories(fusecomm_transport PUBLIC ${FUSECOMM_NCCL_HOME}/include)
  # Static runtime: the installed module needs no libcudart on the library path, and nothing
  # CUDA runs until a device tensor arrives. NCCL is dlopen-ed (libdl), never linked.
  target_link_libraries(fusecomm_reduce PUBLIC CUDA::cudart_static ${CMAKE_DL_LIBS})
  message(STATUS "fusecomm: CUDA path enabled (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
                 "nccl.h from ${FUSECOMM_NCCL_HOME})")
else()
  message(STATUS "fusecomm: CUDA path disabled")
endif()
