// EXPECT: actckpt/core/detail/nesting.hpp is internal to actckpt: include <actckpt/actckpt.hpp>
// A room's detail/ header refuses to be included from outside the library (like Eigen's internal
// headers): a user who reaches for it is told which public header to include instead.
#include <actckpt/core/detail/nesting.hpp>

int main() { return actckpt::detail::in_checkpointed_forward() ? 1 : 0; }
