#include "proxy/handler_memory.h"

#include <new>
#include <vector>

namespace pgvalve::proxy {

namespace {

// Blocks of a few sizes (the first ones asked for on the thread; in practice the waits of clients
// and of servers, one operation type each): as many spares of each as the thread's sessions
// re-arm at once, within a bound.
struct FreeList {
  static constexpr std::size_t kSpares = 64;
  std::size_t bytes = 0;
  std::vector<void*> spares;
  ~FreeList() {
    for (void* block : spares)
      ::operator delete(block);
  }
};

struct FreeLists {
  static constexpr std::size_t kSizes = 4;
  FreeList lists[kSizes];

  // The list of blocks of `bytes`; one is started if a place is free; null otherwise.
  FreeList* of(std::size_t bytes) {
    for (FreeList& list : lists) {
      if (list.bytes == bytes) return &list;
      if (list.bytes == 0) {
        list.bytes = bytes;
        return &list;
      }
    }
    return nullptr;
  }
};

thread_local FreeLists free_lists;

}  // namespace

void* exact_size_allocate(std::size_t bytes) {
  FreeList* list = free_lists.of(bytes);
  if (list && !list->spares.empty()) {
    void* block = list->spares.back();
    list->spares.pop_back();
    return block;
  }
  return ::operator new(bytes);
}

void exact_size_deallocate(void* block, std::size_t bytes) {
  FreeList* list = free_lists.of(bytes);
  if (list && list->spares.size() < FreeList::kSpares) {
    if (list->spares.capacity() == 0) list->spares.reserve(FreeList::kSpares);
    list->spares.push_back(block);
    return;
  }
  ::operator delete(block);
}

}  // namespace pgvalve::proxy
