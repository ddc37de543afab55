// Low-level helpers for reading and writing message bodies: a bounds-checked cursor over a
// body and big-endian appenders. Shared by the protocol readers and builders; usable by other
// folders that need to read a message this library has no reader for.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "protocol/frame.h"

namespace pgvalve::protocol {

// Reads a body front to back. Every read checks the remaining length first; a failed read
// leaves the cursor unchanged so callers can simply bail out with std::nullopt.
class Cursor {
 public:
  explicit Cursor(std::string_view data) : data_(data) {}

  std::size_t remaining() const { return data_.size() - pos_; }
  bool at_end() const { return pos_ == data_.size(); }
  std::string_view rest() const { return data_.substr(pos_); }

  std::optional<std::uint8_t> u8() {
    if (remaining() < 1) return std::nullopt;
    return static_cast<std::uint8_t>(data_[pos_++]);
  }
  std::optional<std::int16_t> i16() {
    if (remaining() < 2) return std::nullopt;
    auto v = static_cast<std::int16_t>(read_u16(data_.data() + pos_));
    pos_ += 2;
    return v;
  }
  std::optional<std::uint16_t> u16() {
    if (remaining() < 2) return std::nullopt;
    auto v = read_u16(data_.data() + pos_);
    pos_ += 2;
    return v;
  }
  std::optional<std::int32_t> i32() {
    if (remaining() < 4) return std::nullopt;
    auto v = static_cast<std::int32_t>(read_u32(data_.data() + pos_));
    pos_ += 4;
    return v;
  }
  std::optional<std::string_view> bytes(std::size_t n) {
    if (remaining() < n) return std::nullopt;
    auto v = data_.substr(pos_, n);
    pos_ += n;
    return v;
  }
  // A NUL-terminated string; the view excludes the NUL, the cursor moves past it.
  std::optional<std::string_view> cstr() {
    if (remaining() == 0) return std::nullopt;  // memchr on a null empty view is UB
    const void* nul = std::memchr(data_.data() + pos_, '\0', remaining());
    if (nul == nullptr) return std::nullopt;
    auto len = static_cast<std::size_t>(static_cast<const char*>(nul) - (data_.data() + pos_));
    auto v = data_.substr(pos_, len);
    pos_ += len + 1;
    return v;
  }

 private:
  std::string_view data_;
  std::size_t pos_ = 0;
};

inline void append_u8(std::string& out, std::uint8_t v) {
  out.push_back(static_cast<char>(v));
}
inline void append_u16(std::string& out, std::uint16_t v) {
  const char b[2] = {static_cast<char>(v >> 8), static_cast<char>(v)};
  out.append(b, 2);
}
inline void append_i16(std::string& out, std::int16_t v) {
  append_u16(out, static_cast<std::uint16_t>(v));
}
inline void append_u32(std::string& out, std::uint32_t v) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 8), static_cast<char>(v)};
  out.append(b, 4);
}
inline void append_i32(std::string& out, std::int32_t v) {
  append_u32(out, static_cast<std::uint32_t>(v));
}
inline void append_cstr(std::string& out, std::string_view s) {
  out.append(s);
  out.push_back('\0');
}
inline void write_u32_at(std::string& out, std::size_t pos, std::uint32_t v) {
  out[pos] = static_cast<char>(v >> 24);
  out[pos + 1] = static_cast<char>(v >> 16);
  out[pos + 2] = static_cast<char>(v >> 8);
  out[pos + 3] = static_cast<char>(v);
}

// Starts a message: writes the tag (if any) and a length placeholder, returns where the length
// goes. The length is patched at the end so builders never have to precompute body sizes.
inline std::size_t begin_message(std::string& out, char tag) {
  out.push_back(tag);
  const std::size_t len_pos = out.size();
  out.append(4, '\0');
  return len_pos;
}
inline std::size_t begin_untagged_message(std::string& out) {
  const std::size_t len_pos = out.size();
  out.append(4, '\0');
  return len_pos;
}
inline void end_message(std::string& out, std::size_t len_pos) {
  write_u32_at(out, len_pos, static_cast<std::uint32_t>(out.size() - len_pos));
}

}  // namespace pgvalve::protocol
