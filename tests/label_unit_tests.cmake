# Included by ctest (TEST_INCLUDE_FILES) after doctest_discover_tests' list of actckpt_tests
# cases: every case is labelled `unit`, and those whose name contains "[cuda]" also `cuda`.
foreach(_case IN LISTS actckpt_tests_TESTS)
  if(_case MATCHES "\\[cuda\\]")
    set_tests_properties("${_case}" PROPERTIES LABELS "unit;cuda")
  else()
    set_tests_properties("${_case}" PROPERTIES LABELS "unit")
  endif()
endforeach()
