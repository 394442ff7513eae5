# What actckpt::distributed (include/actckpt/distributed/distributed.hpp) needs beyond LibTorch's own package,
# checked in one place for actckpt's build and for an installed actckpt's package config:
#  - a LibTorch built with c10d and Gloo: the `torch_cpu` target defines USE_C10D_GLOO, and
#    torch/csrc/distributed/c10d/ProcessGroupGloo.hpp is in its include folders;
#  - Gloo's own headers (gloo/config.h), which LibTorch's CMake package does not bring: looked for
#    in LibTorch's include folders first, then the system's (Debian: libgloo-dev). The cache
#    variable ACTCKPT_GLOO_INCLUDE_DIR names the folder holding gloo/ (set it to use another, or
#    to a folder without gloo/ to do without);
#  - on a CUDA LibTorch, nccl.h for the NCCL process group (optional: Gloo alone otherwise).
#
# actckpt_find_distributed_dependencies() sets, in the caller's scope:
#   ACTCKPT_DISTRIBUTED_USABLE   TRUE when everything required was found
#   ACTCKPT_DISTRIBUTED_MISSING  what is missing and how to get it (empty when usable)
#   ACTCKPT_DISTRIBUTED_INCLUDE_DIRS  the include folders to add (Gloo's, NCCL's)
#   ACTCKPT_DISTRIBUTED_DEFINITIONS   compile definitions to add (USE_C10D_NCCL with NCCL)
#   ACTCKPT_DISTRIBUTED_NCCL     TRUE when the NCCL path is compiled in
# It needs LibTorch found first (the `torch` target).

function(actckpt_find_distributed_dependencies)
  set(_missing "")
  set(_includes "")
  set(_definitions "")
  set(_nccl FALSE)
  get_target_property(_torch_includes torch INTERFACE_INCLUDE_DIRECTORIES)
  if(NOT _torch_includes)
    set(_torch_includes "")
  endif()

  # c10d with Gloo in this LibTorch.
  set(_torch_defs "")
  if(TARGET torch_cpu)
    get_target_property(_torch_defs torch_cpu INTERFACE_COMPILE_DEFINITIONS)
  endif()
  if(NOT "USE_C10D_GLOO" IN_LIST _torch_defs)
    list(APPEND _missing "this LibTorch was built without c10d's Gloo process group (its torch_cpu target does not define USE_C10D_GLOO)")
  endif()
  set(_c10d FALSE)
  foreach(_dir IN LISTS _torch_includes)
    if(EXISTS "${_dir}/torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
      set(_c10d TRUE)
    endif()
  endforeach()
  if(NOT _c10d)
    list(APPEND _missing "LibTorch's include folders (${_torch_includes}) have no torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
  endif()

  # Gloo's headers.
  find_path(ACTCKPT_GLOO_INCLUDE_DIR gloo/config.h HINTS ${_torch_includes}
            DOC "The folder holding Gloo's headers (gloo/config.h), for actckpt::distributed")
  mark_as_advanced(ACTCKPT_GLOO_INCLUDE_DIR)
  if(NOT ACTCKPT_GLOO_INCLUDE_DIR)
    list(APPEND _missing "Gloo's headers (gloo/config.h) were not found: LibTorch's package does not ship them; install "
                         "them (Debian: apt-get install libgloo-dev) or give their folder as -DACTCKPT_GLOO_INCLUDE_DIR=<dir>")
  elseif(NOT EXISTS "${ACTCKPT_GLOO_INCLUDE_DIR}/gloo/config.h")
    list(APPEND _missing "ACTCKPT_GLOO_INCLUDE_DIR=${ACTCKPT_GLOO_INCLUDE_DIR} has no gloo/config.h")
  else()
    list(APPEND _includes "${ACTCKPT_GLOO_INCLUDE_DIR}")
  endif()

  # NCCL on CUDA: c10d's ProcessGroupNCCL.hpp is compiled in under USE_C10D_NCCL and includes
  # nccl.h, which a CUDA LibTorch does not always ship (pip: the nvidia-nccl wheel beside torch/,
  # looked for first, as the toolkit's may be older).
  if(NOT _missing AND TARGET torch_cuda)
    find_path(ACTCKPT_NCCL_INCLUDE_DIR nccl.h HINTS ${_torch_includes} ${TORCH_INSTALL_PREFIX}/../nvidia/nccl/include
              $ENV{CUDA_HOME}/include /usr/local/cuda/include
              DOC "The folder holding nccl.h, for actckpt::distributed's NCCL process group")
    mark_as_advanced(ACTCKPT_NCCL_INCLUDE_DIR)
    if(ACTCKPT_NCCL_INCLUDE_DIR)
      list(APPEND _includes "${ACTCKPT_NCCL_INCLUDE_DIR}")
      list(APPEND _definitions USE_C10D_NCCL)
      set(_nccl TRUE)
    endif()
  endif()

  if(_missing)
    list(JOIN _missing "; " _missing)
    set(ACTCKPT_DISTRIBUTED_USABLE FALSE PARENT_SCOPE)
  else()
    set(ACTCKPT_DISTRIBUTED_USABLE TRUE PARENT_SCOPE)
  endif()
  set(ACTCKPT_DISTRIBUTED_MISSING "${_missing}" PARENT_SCOPE)
  set(ACTCKPT_DISTRIBUTED_INCLUDE_DIRS "${_includes}" PARENT_SCOPE)
  set(ACTCKPT_DISTRIBUTED_DEFINITIONS "${_definitions}" PARENT_SCOPE)
  set(ACTCKPT_DISTRIBUTED_NCCL ${_nccl} PARENT_SCOPE)
endfunction()
