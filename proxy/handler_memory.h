// Memory for the operations of the waits a session re-arms at every transaction. Asio's default
// per-thread cache keeps two blocks: with more sessions busy at once, a wait allocates, and an
// idle client would keep whichever block was freed last on the thread, often the larger block of
// another kind of operation, for as long as it idles. This allocator gives an operation exactly
// its size, from per-thread free lists, so that re-arming a wait allocates nothing.
#pragma once

#include <cstddef>
#include <utility>

namespace pgvalve::proxy {

void* exact_size_allocate(std::size_t bytes);
void exact_size_deallocate(void* block, std::size_t bytes);

template <typename T>
class ExactSizeAllocator {
 public:
  using value_type = T;
  ExactSizeAllocator() noexcept = default;
  template <typename U>
  ExactSizeAllocator(const ExactSizeAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(exact_size_allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { exact_size_deallocate(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const ExactSizeAllocator<U>&) const noexcept {
    return true;
  }
};

// A completion handler whose operation Asio allocates with ExactSizeAllocator.
template <typename F>
struct ExactSizeHandler {
  F f;
  using allocator_type = ExactSizeAllocator<void>;
  allocator_type get_allocator() const noexcept { return {}; }
  template <typename... Args>
  void operator()(Args&&... args) {
    f(std::forward<Args>(args)...);
  }
};

template <typename F>
ExactSizeHandler<F> with_exact_size_memory(F f) {
  return ExactSizeHandler<F>{std::move(f)};
}

}  // namespace pgvalve::proxy
