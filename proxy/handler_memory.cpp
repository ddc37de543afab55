#include "proxy/handler_memory.h"

#include <new>
#include <vector>

namespace pgvalve::proxy {

namespace {

// Blocks of one size (the first asked for on the thread; in practice every client's wait has the
// same operation type): as many spares as the thread's clients re-arm at once, within a bound.
struct FreeList {
  static constexpr std::size_t kSpares = 64;
  std::size_t bytes = 0;
  std::vector<void*> spares;
  ~FreeList() {
    for (void* block : spares)
      ::operator delete(block);
  }
};

thread_local FreeList free_list;

}  // namespace

void* exact_size_allocate(std::size_t bytes) {
  FreeList& list = free_list;
  if (list.bytes == 0) list.bytes = bytes;
  if (bytes == list.bytes && !list.spares.empty()) {
    void* block = list.spares.back();
    list.spares.pop_back();
    return block;
  }
  return ::operator new(bytes);
}

void exact_size_deallocate(void* block, std::size_t bytes) {
  FreeList& list = free_list;
  if (bytes == list.bytes && list.spares.size() < FreeList::kSpares) {
    if (list.spares.capacity() == 0) list.spares.reserve(FreeList::kSpares);
    list.spares.push_back(block);
    return;
  }
  ::operator delete(block);
}

}  // namespace pgvalve::proxy
