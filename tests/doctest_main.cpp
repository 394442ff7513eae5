// The one doctest main shared by every unit test (an OBJECT library, as in nlohmann/json).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
