# Included by ctest (TEST_INCLUDE_FILES) after doctest_discover_tests' list of actckpt_tests
# cases: every case is labelled `unit`, and those whose name contains "[cuda]" also `cuda`.
# Environment: two intra-op threads whose idle OpenMP workers sleep (OMP_WAIT_POLICY=PASSIVE):
# ctest runs two cases at once on 2 cores, and spinning workers made cases up to 10x slower.
foreach(_case IN LISTS actckpt_tests_TESTS)
  if(_case MATCHES "\\[cuda\\]")
    set(_labels "unit;cuda")
  else()
    set(_labels "unit")
  endif()
  set_tests_properties("${_case}" PROPERTIES LABELS "${_labels}" ENVIRONMENT "OMP_NUM_THREADS=2;OMP_WAIT_POLICY=PASSIVE")
endforeach()
