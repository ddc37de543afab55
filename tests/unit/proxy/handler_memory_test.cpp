// The memory of the waits sessions re-arm at every transaction: a block freed on a thread is
// what the next operation of its size gets there, for the client's and the server's waits
// alike, so that re-arming allocates nothing.
#include "proxy/handler_memory.h"

#include <cstddef>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace pgvalve::proxy {
namespace {

// Sizes no other test of this binary asks for: each thread's free lists keep the sizes first
// asked for on it.
constexpr std::size_t kClientWait = 88;
constexpr std::size_t kServerWait = 104;

TEST(HandlerMemory, AFreedBlockIsTheNextOfItsSize) {
  std::thread([] {
    void* client = exact_size_allocate(kClientWait);
    void* server = exact_size_allocate(kServerWait);
    exact_size_deallocate(client, kClientWait);
    exact_size_deallocate(server, kServerWait);
    // Other code of the thread allocates meanwhile: a block that went back to malloc would be
    // the one it gets.
    void* other_client = ::operator new(kClientWait);
    void* other_server = ::operator new(kServerWait);
    // The waits of the next transaction: the same blocks, whatever order they are armed in.
    EXPECT_EQ(exact_size_allocate(kServerWait), server);
    EXPECT_EQ(exact_size_allocate(kClientWait), client);
    exact_size_deallocate(client, kClientWait);
    exact_size_deallocate(server, kServerWait);
    ::operator delete(other_client);
    ::operator delete(other_server);
  }).join();
}

TEST(HandlerMemory, ManySessionsReArmWithoutAllocating) {
  std::thread([] {
    // 64 sessions each with a wait armed, then all re-armed: every block comes back.
    std::vector<void*> blocks;
    for (int i = 0; i < 64; ++i)
      blocks.push_back(exact_size_allocate(kServerWait));
    const std::set<void*> first(blocks.begin(), blocks.end());
    for (void* b : blocks)
      exact_size_deallocate(b, kServerWait);
    blocks.clear();
    for (int i = 0; i < 64; ++i)
      blocks.push_back(exact_size_allocate(kServerWait));
    EXPECT_EQ(std::set<void*>(blocks.begin(), blocks.end()), first);
    for (void* b : blocks)
      exact_size_deallocate(b, kServerWait);
  }).join();
}

TEST(HandlerMemory, SizesBeyondTheListsStillWork) {
  std::thread([] {
    // More sizes than the thread keeps lists for: the others come from operator new and go
    // back to it (ASan tells if a block went to the wrong place).
    std::vector<std::pair<void*, std::size_t>> blocks;
    for (std::size_t size = 16; size <= 16 * 12; size += 16)
      blocks.emplace_back(exact_size_allocate(size), size);
    for (auto [block, size] : blocks) {
      static_cast<char*>(block)[size - 1] = 1;  // the whole block is usable
      exact_size_deallocate(block, size);
    }
  }).join();
}

}  // namespace
}  // namespace pgvalve::proxy
