# Install and export rules for the header-only actckpt::actckpt target.
# Consumers: find_package(actckpt 0.1 REQUIRED) + target_link_libraries(app PRIVATE actckpt::actckpt),
# with CMAKE_PREFIX_PATH naming the install prefix or this build tree; for data parallelism
# find_package(actckpt 0.1 REQUIRED COMPONENTS distributed) + actckpt::distributed.

include(CMakePackageConfigHelpers)

# Header-only and architecture independent, so the package files go to share/ (cmake-init).
set(ACTCKPT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/actckpt"
    CACHE STRING "Install directory of actckpt's CMake package files, relative to the prefix")
mark_as_advanced(ACTCKPT_INSTALL_CMAKEDIR)

# The library's rooms, and the deprecated forwarding headers of the old flat paths beside them
# (include/compat/actckpt/*.hpp -> <prefix>/include/actckpt/*.hpp): one include folder either way.
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/actckpt" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        COMPONENT actckpt_Development)
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/compat/actckpt" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        COMPONENT actckpt_Development)

install(TARGETS actckpt EXPORT actckptTargets)
# actckpt::distributed is not exported: whether it can work depends on the consumer's machine
# (Gloo's headers, a LibTorch with c10d), so the package config checks and declares it there.

install(
  EXPORT actckptTargets
  NAMESPACE actckpt::
  DESTINATION "${ACTCKPT_INSTALL_CMAKEDIR}"
  COMPONENT actckpt_Development)

configure_package_config_file(
  "${CMAKE_CURRENT_LIST_DIR}/actckptConfig.cmake.in" "${PROJECT_BINARY_DIR}/actckptConfig.cmake"
  INSTALL_DESTINATION "${ACTCKPT_INSTALL_CMAKEDIR}")

write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/actckptConfigVersion.cmake"
  COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)

install(FILES "${PROJECT_BINARY_DIR}/actckptConfig.cmake"
              "${PROJECT_BINARY_DIR}/actckptConfigVersion.cmake"
              "${CMAKE_CURRENT_LIST_DIR}/actckptDistributed.cmake"
        DESTINATION "${ACTCKPT_INSTALL_CMAKEDIR}" COMPONENT actckpt_Development)

# The same config file works from the build tree (CMAKE_PREFIX_PATH=<build dir>): it includes
# the targets file and the distributed checks that sit next to it.
configure_file("${CMAKE_CURRENT_LIST_DIR}/actckptDistributed.cmake" "${PROJECT_BINARY_DIR}/actckptDistributed.cmake"
               COPYONLY)
export(EXPORT actckptTargets NAMESPACE actckpt:: FILE "${PROJECT_BINARY_DIR}/actckptTargets.cmake")
