# The C++ core's layers, lowest first: one static library each, linked only to the layers below
# it, and a check that no source includes a layer it may not use. The table below is the one
# place the layering is written down (docs/design.md explains it).
#
#   common        errors, config, logging, types
#   reduce        element-wise reduction kernels (CPU; CUDA in CUDA builds)
#   transport     Comm, memory, Topology (communicators), ControlChannel, Bootstrap, abort
#                 state; the NCCL transport and device memory in CUDA builds
#   transport_mpi the MPI transport: MpiComm, MpiControlChannel, liveness, MpiBootstrap
#   collectives   the all-reduce algorithms, cost model, tuner and selector (over Comm)
#   timeline      the Chrome-trace timeline
#   engine        queue, negotiation, fusion, execution, start-up over a Bootstrap
#
# Nothing but transport_mpi (and the bindings above everything) includes <mpi.h>.
#
# Used two ways: include()d by CMakeLists.txt (fusecomm_check_layers, then
# fusecomm_add_layer for each layer), or as a script that only checks:
#   cmake -DFUSECOMM_CSRC=/path/to/csrc -P cmake/layers.cmake

cmake_policy(SET CMP0057 NEW)  # if(... IN_LIST ...), also in script mode

set(FUSECOMM_LAYERS common reduce transport transport_mpi collectives timeline engine)
set(FUSECOMM_LAYER_DEPS_common "")
set(FUSECOMM_LAYER_DEPS_reduce common)
set(FUSECOMM_LAYER_DEPS_transport reduce common)
set(FUSECOMM_LAYER_DEPS_transport_mpi transport reduce common)
set(FUSECOMM_LAYER_DEPS_collectives transport reduce common)
set(FUSECOMM_LAYER_DEPS_timeline common)
set(FUSECOMM_LAYER_DEPS_engine collectives timeline transport reduce common)
set(FUSECOMM_MPI_LAYERS transport_mpi)

# The layer a path under csrc/ (a source, or what an #include names) belongs to.
function(fusecomm_layer_of path out_var)
  if(path MATCHES "^transport/mpi/")
    set(${out_var} transport_mpi PARENT_SCOPE)
  elseif(path MATCHES "^([a-z_]+)/")
    set(${out_var} ${CMAKE_MATCH_1} PARENT_SCOPE)
  else()
    set(${out_var} "" PARENT_SCOPE)
  endif()
endfunction()

# Fails (FATAL_ERROR) listing every include of a layer the including file's layer may not use.
function(fusecomm_check_layers csrc)
  file(GLOB_RECURSE files RELATIVE ${csrc} ${csrc}/*.h ${csrc}/*.cc ${csrc}/*.cu ${csrc}/*.cuh)
  set(violations "")
  foreach(file ${files})
    fusecomm_layer_of(${file} layer)
    if(NOT layer IN_LIST FUSECOMM_LAYERS)
      list(APPEND violations "${file}: not in any layer (add its directory to cmake/layers.cmake)")
      continue()
    endif()
    set(allowed ${layer} ${FUSECOMM_LAYER_DEPS_${layer}})
    file(STRINGS ${csrc}/${file} includes REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
    foreach(line ${includes})
      if(line MATCHES "#[ \t]*include[ \t]*\"([^\"]+)\"")
        fusecomm_layer_of(${CMAKE_MATCH_1} target)
        if(target AND NOT target IN_LIST allowed)
          list(APPEND violations "${file} (layer ${layer}) includes ${CMAKE_MATCH_1} (layer ${target})")
        endif()
      elseif(line MATCHES "#[ \t]*include[ \t]*<(mpi[^>]*)>" AND NOT layer IN_LIST FUSECOMM_MPI_LAYERS)
        list(APPEND violations "${file} (layer ${layer}) includes <${CMAKE_MATCH_1}>: only ${FUSECOMM_MPI_LAYERS} may")
      endif()
    endforeach()
  endforeach()
  if(violations)
    list(JOIN violations "\n  " text)
    message(FATAL_ERROR "fusecomm layering violated (see cmake/layers.cmake):\n  ${text}")
  endif()
endfunction()

if(CMAKE_SCRIPT_MODE_FILE)
  if(NOT FUSECOMM_CSRC)
    message(FATAL_ERROR "usage: cmake -DFUSECOMM_CSRC=<csrc dir> -P cmake/layers.cmake")
  endif()
  fusecomm_check_layers(${FUSECOMM_CSRC})
  message(STATUS "fusecomm layering: ok")
  return()
endif()

# fusecomm_<layer>: the layer's host sources (`sources`), linked to the layers below it.
function(fusecomm_add_layer layer sources)
  set(target fusecomm_${layer})
  add_library(${target} STATIC ${sources})
  target_include_directories(${target} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
  set(deps "")
  foreach(dep ${FUSECOMM_LAYER_DEPS_${layer}})
    list(APPEND deps fusecomm_${dep})
  endforeach()
  target_link_libraries(${target} PUBLIC ${deps} Threads::Threads)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -O3>)
  if(layer IN_LIST FUSECOMM_MPI_LAYERS)
    target_link_libraries(${target} PUBLIC MPI::MPI_C)
  endif()
  if(FUSECOMM_SANITIZE)
    target_compile_options(${target} PUBLIC -fsanitize=${FUSECOMM_SANITIZE} -fno-omit-frame-pointer)
    target_link_options(${target} PUBLIC -fsanitize=${FUSECOMM_SANITIZE})
  endif()
endfunction()
