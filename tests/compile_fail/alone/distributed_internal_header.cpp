// EXPECT: actckpt/distributed/detail/rendezvous.hpp is internal
// The distributed room's detail/ headers refuse direct inclusion too; the guard stands before
// their own includes, so it speaks first even where Gloo's headers are missing.
#include <actckpt/distributed/detail/rendezvous.hpp>

int main() {}
