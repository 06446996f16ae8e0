// Types and helpers shared by every kernel family. Header-only, no ISA-specific code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace pyquant {

using std::int8_t;
using std::int32_t;
using std::int64_t;
using std::uint8_t;
using index_t = std::int64_t;

constexpr std::size_t kAlign = 64;

// 64-byte aligned buffer for packed operands (no std::vector: its value-initialization costs a pass).
template <class T>
struct AlignedBuffer {
    T* data = nullptr;
    std::size_t size = 0;
    AlignedBuffer() = default;
    explicit AlignedBuffer(std::size_t n) { resize(n); }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
    AlignedBuffer(AlignedBuffer&& o) noexcept : data(o.data), size(o.size) { o.data = nullptr; o.size = 0; }
    AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
        if (this != &o) { std::free(data); data = o.data; size = o.size; o.data = nullptr; o.size = 0; }
        return *this;
    }
    ~AlignedBuffer() { std::free(data); }
    void resize(std::size_t n) {
        std::free(data);
        data = nullptr;
        size = n;
        if (n == 0) return;
        std::size_t bytes = (n * sizeof(T) + kAlign - 1) / kAlign * kAlign;
        data = static_cast<T*>(std::aligned_alloc(kAlign, bytes));
        if (!data) throw std::bad_alloc();
    }
    T& operator[](std::size_t i) { return data[i]; }
    const T& operator[](std::size_t i) const { return data[i]; }
};

inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }
inline index_t round_up(index_t a, index_t b) { return ceil_div(a, b) * b; }

}  // namespace pyquant
