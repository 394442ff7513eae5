// The one doctest main shared by every unit test (an OBJECT library, as in nlohmann/json), with
// the device switch's listener: after the cases it prints one line,
//   [device switch] cpu: 12 cases ran (10 read the switch, 1 cpu-only, 1 without tensors), 2 skipped (cannot run here)
// listing each skipped case with its reason, and fails the run (exit code 3) when a case ran
// without reading the switch (tests/support/test_device.hpp) and without a decorator saying why.
// doctest's own "skipped" count also counts the cases filtered out (--source-file, ...), so it
// cannot say what was skipped for want of a device: this line does; ctest's unit tests and
// scripts/test.sh read it.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "support/device_switch_ledger.hpp"

#include <iostream>
#include <string>
#include <vector>

namespace {

using device_switch::Declared;

bool g_unreached = false;

struct DeviceSwitchListener : doctest::IReporter {
  explicit DeviceSwitchListener(const doctest::ContextOptions&) {}

  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {
    std::cout << "[device switch] " << device_switch::named() << ": " << ran_ << " cases ran (" << read_
              << " read the switch, " << cpu_only_ << " cpu-only, " << no_tensors_ << " without tensors, " << cuda_
              << " cuda), " << skipped_.size() << " skipped (cannot run here)\n";
    for (const auto& s : skipped_) std::cout << "[device switch] skipped: " << s << "\n";
    for (const auto& u : unreached_) {
      std::cout << "[device switch] ERROR: " << u
                << " ran without taking its device from test_device::device()/options() and without a decorator "
                   "(test_device::cpu_only, no_tensors, needs_cuda) saying why\n";
    }
    g_unreached = !unreached_.empty();
  }
  void test_case_start(const doctest::TestCaseData& tc) override {
    current_ = &tc;
    reads_at_start_ = device_switch::reads().load();
  }
  void test_case_reenter(const doctest::TestCaseData&) override {}  // a subcase's rerun: still the same case
  void test_case_end(const doctest::CurrentTestCaseStats&) override {
    if (current_ != nullptr) count_ran(*current_);
    current_ = nullptr;
  }
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}

  // doctest calls this for a case filtered out as well as for one whose decorator skipped it:
  // only a decorator-skipped case that the filters select would have run here.
  void test_case_skipped(const doctest::TestCaseData& tc) override {
    if (!tc.m_skip || !selected(tc)) return;
    const Declared d = device_switch::declared(tc.m_file.c_str(), tc.m_line);
    std::string why = d == Declared::needs_cuda ? "needs a CUDA device"
                      : d == Declared::cpu_only ? std::string("cpu-only: ") + (tc.m_description ? tc.m_description : "")
                                                : "a skip decorator";
    skipped_.push_back(std::string(tc.m_name) + " (" + why + ")");
  }

  void count_ran(const doctest::TestCaseData& tc) {
    ++ran_;
    const Declared d = device_switch::declared(tc.m_file.c_str(), tc.m_line);
    if (device_switch::reads().load() != reads_at_start_) {
      ++read_;
    } else if (d == Declared::cpu_only) {
      ++cpu_only_;
    } else if (d == Declared::no_tensors) {
      ++no_tensors_;
    } else if (d == Declared::needs_cuda) {
      ++cuda_;
    } else {
      unreached_.push_back(std::string(tc.m_name) + " (" + tc.m_file.c_str() + ":" + std::to_string(tc.m_line) + ")");
    }
  }

 private:
  // The same filters doctest applied (file, suite and case name; subcase filters do not select cases).
  static bool selected(const doctest::TestCaseData& tc) {
    using doctest::detail::g_cs;
    using doctest::matchesAny;
    const bool cs = g_cs->case_sensitive;
    return matchesAny(tc.m_file.c_str(), g_cs->filters[0], true, cs) &&
           !matchesAny(tc.m_file.c_str(), g_cs->filters[1], false, cs) &&
           matchesAny(tc.m_test_suite, g_cs->filters[2], true, cs) &&
           !matchesAny(tc.m_test_suite, g_cs->filters[3], false, cs) &&
           matchesAny(tc.m_name, g_cs->filters[4], true, cs) && !matchesAny(tc.m_name, g_cs->filters[5], false, cs);
  }

  const doctest::TestCaseData* current_ = nullptr;
  unsigned long reads_at_start_ = 0;
  int ran_ = 0, read_ = 0, cpu_only_ = 0, no_tensors_ = 0, cuda_ = 0;
  std::vector<std::string> skipped_, unreached_;
};

}  // namespace

REGISTER_LISTENER("device_switch", 1, DeviceSwitchListener);

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int result = context.run();
  if (context.shouldExit() || result != 0) return result;
  return g_unreached ? 3 : 0;
}
