#pragma once
// A minimal, bounds-checked ZIP reader over a memory-mapped file: just what PyTorch checkpoints need.
//
// PyTorch's writer (torch.save since 1.6) stores every record uncompressed, its data 64-byte aligned, with data
// descriptors after each record and a ZIP64 end record even for small files; checkpoints of 2-7 GB need the ZIP64
// fields. Re-zipped `.pth` files may use DEFLATE. So this reader supports:
//   - the end of central directory record, the ZIP64 locator and record, ZIP64 extra fields (sizes, offsets);
//   - STORED entries, returned zero-copy as pointers into the mapping;
//   - DEFLATED entries, inflated with zlib into a buffer (size-capped by DEFLATE's maximum ratio, CRC-checked).
// Sizes, method and CRC come from the central directory (the local headers of torch files hold zeros and a
// data descriptor); a local header is only used to find where its data starts, and its name must match.
// Not supported (FormatError): encryption, multi-disk archives, compression methods other than 0 and 8.
// Every malformed archive is an adabldm::FormatError naming the file and the problem, never an out-of-bounds read.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <zlib.h>

#include "adabldm/core/error.hpp"
#include "adabldm/io/mapped_file.hpp"

namespace adabldm::io {

/// Bytes of one zip entry, kept alive by `owner` (the mapping for stored entries, a buffer for inflated ones).
struct ZipBytes {
  std::shared_ptr<void> owner;
  const std::byte* data = nullptr;
  std::size_t size = 0;
};

class ZipArchive {
 public:
  enum Method : uint16_t { kStored = 0, kDeflated = 8 };

  /// One central directory record.
  struct Entry {
    std::string name;
    uint16_t method = kStored;
    uint32_t crc32 = 0;
    uint64_t compressed_size = 0;
    uint64_t uncompressed_size = 0;
    uint64_t local_header_offset = 0;
  };

  /// Maps `path` and reads its central directory (IoError if it cannot be opened).
  static ZipArchive open(const std::string& path) { return ZipArchive(MappedFile::open(path)); }

  /// Reads the central directory of an already mapped file.
  explicit ZipArchive(std::shared_ptr<MappedFile> file) : file_(std::move(file)) { parse_central_directory(); }

  const std::string& path() const noexcept { return file_->path(); }
  const std::shared_ptr<MappedFile>& file() const noexcept { return file_; }
  /// Entries in central directory order.
  const std::vector<Entry>& entries() const noexcept { return entries_; }
  /// The entry with this exact name, or nullptr.
  const Entry* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }

  /// The entry's uncompressed bytes. STORED entries point into the mapping (no copy); their CRC is checked only
  /// when `verify_crc` is set, because checking it reads the whole entry (gigabytes for a checkpoint's tensors).
  /// DEFLATED entries are inflated into a new buffer and always CRC-checked.
  ZipBytes read(const Entry& e, bool verify_crc = false) const {
    const std::size_t begin = data_offset(e);
    const std::byte* src = file_->data() + begin;
    const std::size_t csize = static_cast<std::size_t>(e.compressed_size);
    ZipBytes out;
    if (e.method == kStored) {
      out = ZipBytes{file_, src, csize};
      if (verify_crc) check_crc(e, out);
      return out;
    }
    // DEFLATE cannot expand data by more than ~1032:1, so a larger claimed size is a lie (or a zip bomb).
    if (e.uncompressed_size / 1032 > e.compressed_size + 1)
      fail(e, "claims " + std::to_string(e.uncompressed_size) + " bytes inflated from only " +
               std::to_string(e.compressed_size) + " (impossible for DEFLATE)");
    // One spare byte: zlib needs somewhere to write even for an empty entry, and it exposes overlong data.
    const std::size_t usize = static_cast<std::size_t>(e.uncompressed_size);
    std::shared_ptr<std::vector<std::byte>> buffer;
    try {
      buffer = std::make_shared<std::vector<std::byte>>(usize + 1);
    } catch (const std::bad_alloc&) {
      fail(e, "needs " + std::to_string(usize) + " bytes to inflate: out of memory");
    }
    inflate_raw(e, src, csize, buffer->data(), usize);
    out = ZipBytes{buffer, buffer->data(), usize};
    check_crc(e, out);
    return out;
  }

 private:
  static constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50,
                            kZip64EndSig = 0x06064b50, kZip64LocatorSig = 0x07064b50;
  static constexpr std::size_t kEndSize = 22, kZip64LocatorSize = 20, kZip64EndSize = 56, kCentralSize = 46,
                               kLocalSize = 30;

  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(path() + ": zip: " + what);
  }
  [[noreturn]] void fail(const Entry& e, const std::string& what) const {
    throw FormatError(path() + ": zip entry \"" + e.name + "\" " + what);
  }

  std::size_t size() const noexcept { return file_->size(); }
  /// Little-endian integer of N bytes at `off`; the caller has checked the range.
  template <class T>
  T le(std::size_t off) const noexcept {
    T v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(file_->data()[off + i]) << (8 * i));
    return v;
  }
  /// Whether [off, off + n) lies inside the file (overflow-safe).
  bool in_file(uint64_t off, uint64_t n) const noexcept { return off <= size() && n <= size() - off; }

  void parse_central_directory() {
    if (size() < kEndSize) fail("truncated or not a zip archive: " + std::to_string(size()) + " bytes");
    // The end record is the last 22 bytes plus an optional comment of up to 65535 bytes: scan backwards.
    std::size_t end = size() - kEndSize;
    const std::size_t lowest = size() > kEndSize + 0xffff ? size() - kEndSize - 0xffff : 0;
    for (;; --end) {
      if (le<uint32_t>(end) == kEndSig && end + kEndSize + le<uint16_t>(end + 20) <= size()) break;
      if (end == lowest) fail("end of central directory record not found (truncated or not a zip archive)");
    }
    if (le<uint16_t>(end + 4) != 0 || le<uint16_t>(end + 6) != 0) fail("multi-disk archives are not supported");
    uint64_t count = le<uint16_t>(end + 10);
    uint64_t cd_size = le<uint32_t>(end + 12);
    uint64_t cd_offset = le<uint32_t>(end + 16);
    uint64_t cd_end_limit = end;  // the central directory must end before the end record(s)

    // ZIP64: a locator right before the end record points at the ZIP64 end record, whose fields win.
    if (end >= kZip64LocatorSize && le<uint32_t>(end - kZip64LocatorSize) == kZip64LocatorSig) {
      const std::size_t loc = end - kZip64LocatorSize;
      const uint64_t rec = le<uint64_t>(loc + 8);
      if (le<uint32_t>(loc + 16) > 1) fail("multi-disk ZIP64 archives are not supported");
      if (!in_file(rec, kZip64EndSize) || rec + kZip64EndSize > loc)
        fail("ZIP64 end record offset " + std::to_string(rec) + " is out of range");
      if (le<uint32_t>(static_cast<std::size_t>(rec)) != kZip64EndSig) fail("bad ZIP64 end record signature");
      const std::size_t r = static_cast<std::size_t>(rec);
      count = le<uint64_t>(r + 32);
      cd_size = le<uint64_t>(r + 40);
      cd_offset = le<uint64_t>(r + 48);
      cd_end_limit = rec;
    }
    if (cd_offset > cd_end_limit || cd_size > cd_end_limit - cd_offset)
      fail("central directory [" + std::to_string(cd_offset) + ", +" + std::to_string(cd_size) +
           ") is out of range (truncated file?)");
    if (count > cd_size / kCentralSize)
      fail(std::to_string(count) + " entries cannot fit in a central directory of " + std::to_string(cd_size) +
           " bytes");

    entries_.reserve(static_cast<std::size_t>(count));
    std::size_t pos = static_cast<std::size_t>(cd_offset);
    const std::size_t cd_end = static_cast<std::size_t>(cd_offset + cd_size);
    for (uint64_t i = 0; i < count; ++i) {
      const std::string where = "central directory entry " + std::to_string(i);
      if (cd_end - pos < kCentralSize) fail(where + " is truncated");
      if (le<uint32_t>(pos) != kCentralSig) fail(where + ": bad signature (corrupted central directory)");
      Entry e;
      const uint16_t flags = le<uint16_t>(pos + 8);
      e.method = le<uint16_t>(pos + 10);
      e.crc32 = le<uint32_t>(pos + 16);
      e.compressed_size = le<uint32_t>(pos + 20);
      e.uncompressed_size = le<uint32_t>(pos + 24);
      const std::size_t name_len = le<uint16_t>(pos + 28), extra_len = le<uint16_t>(pos + 30),
                        comment_len = le<uint16_t>(pos + 32);
      const uint16_t disk = le<uint16_t>(pos + 34);
      e.local_header_offset = le<uint32_t>(pos + 42);
      if (cd_end - pos - kCentralSize < name_len + extra_len + comment_len) fail(where + " overruns the directory");
      const std::size_t name_at = pos + kCentralSize;
      e.name.assign(reinterpret_cast<const char*>(file_->data() + name_at), name_len);
      read_zip64_extra(e, disk, name_at + name_len, extra_len);
      pos = name_at + name_len + extra_len + comment_len;

      if (flags & 0x1) fail(e, "is encrypted (not supported)");
      if (e.method != kStored && e.method != kDeflated)
        fail(e, "uses unsupported compression method " + std::to_string(e.method) + " (only stored and deflate)");
      if (e.method == kStored && e.compressed_size != e.uncompressed_size)
        fail(e, "is stored but its sizes differ (" + std::to_string(e.compressed_size) + " vs " +
                    std::to_string(e.uncompressed_size) + ")");
      if (!in_file(e.local_header_offset, kLocalSize) || !in_file(e.local_header_offset, e.compressed_size))
        fail(e, "offset " + std::to_string(e.local_header_offset) + " or size " + std::to_string(e.compressed_size) +
                    " is out of range (truncated file?)");
      if (e.uncompressed_size > std::numeric_limits<std::size_t>::max() / 2) fail(e, "is too large");
      if (!index_.emplace(e.name, entries_.size()).second) fail(e, "appears twice");
      entries_.push_back(std::move(e));
    }
  }

  /// ZIP64 extended information (header id 1): 8-byte values for exactly the fields that hold 0xFFFFFFFF, in the
  /// order uncompressed size, compressed size, local header offset (then a disk number we do not need).
  void read_zip64_extra(Entry& e, uint16_t disk, std::size_t at, std::size_t len) const {
    const bool need_u = e.uncompressed_size == 0xffffffffu, need_c = e.compressed_size == 0xffffffffu,
               need_o = e.local_header_offset == 0xffffffffu;
    bool found = false;
    for (std::size_t p = at, stop = at + len; stop - p >= 4;) {
      const uint16_t id = le<uint16_t>(p), n = le<uint16_t>(p + 2);
      if (stop - p - 4 < n) fail(e, "has a malformed extra field");
      if (id == 0x0001) {
        found = true;
        std::size_t q = p + 4;
        const std::size_t q_end = q + n;
        for (auto [needed, field] : {std::pair{need_u, &e.uncompressed_size}, std::pair{need_c, &e.compressed_size},
                                     std::pair{need_o, &e.local_header_offset}}) {
          if (!needed) continue;
          if (q_end - q < 8) fail(e, "has a ZIP64 extra field too short for its 0xFFFFFFFF sizes");
          *field = le<uint64_t>(q);
          q += 8;
        }
      }
      p += 4 + n;
    }
    if ((need_u || need_c || need_o) && !found) fail(e, "has a 0xFFFFFFFF size or offset but no ZIP64 extra field");
    if (disk != 0 && disk != 0xffff) fail(e, "starts on another disk (multi-disk archives are not supported)");
  }

  /// Where the entry's data starts: after its local header, whose name must match the central directory's.
  std::size_t data_offset(const Entry& e) const {
    const std::size_t lh = static_cast<std::size_t>(e.local_header_offset);  // range checked in parse
    if (le<uint32_t>(lh) != kLocalSig) fail(e, "has a bad local header signature");
    const std::size_t name_len = le<uint16_t>(lh + 26), extra_len = le<uint16_t>(lh + 28);
    const uint64_t begin = static_cast<uint64_t>(lh) + kLocalSize + name_len + extra_len;
    if (!in_file(begin, e.compressed_size))
      fail(e, "data [" + std::to_string(begin) + ", +" + std::to_string(e.compressed_size) +
                  ") is out of range (truncated file?)");
    if (name_len != e.name.size() || std::memcmp(file_->data() + lh + kLocalSize, e.name.data(), name_len) != 0)
      fail(e, "has a local header whose name differs from the central directory");
    return static_cast<std::size_t>(begin);
  }

  /// Inflates n bytes of raw DEFLATE data into dst, which has room for m + 1 bytes; exactly m must come out.
  void inflate_raw(const Entry& e, const std::byte* src, std::size_t n, std::byte* dst, std::size_t m) const {
    z_stream zs{};
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) fail(e, "cannot be inflated (zlib initialisation failed)");
    // zlib counts in 32-bit units: feed input and output in chunks.
    constexpr std::size_t kChunk = 1u << 30;
    std::size_t in_left = n, out_left = m + 1;
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(src));
    zs.next_out = reinterpret_cast<Bytef*>(dst);
    int rc = Z_OK;
    while (rc == Z_OK) {
      if (zs.avail_in == 0 && in_left > 0) {
        zs.avail_in = static_cast<uInt>(std::min(in_left, kChunk));
        in_left -= zs.avail_in;
      }
      if (zs.avail_out == 0 && out_left > 0) {
        zs.avail_out = static_cast<uInt>(std::min(out_left, kChunk));
        out_left -= zs.avail_out;
      }
      const uInt in_before = zs.avail_in, out_before = zs.avail_out;
      rc = inflate(&zs, Z_NO_FLUSH);
      if (rc == Z_BUF_ERROR || (rc == Z_OK && zs.avail_in == in_before && zs.avail_out == out_before)) break;
    }
    const uint64_t produced = zs.total_out;
    inflateEnd(&zs);
    if (rc != Z_STREAM_END)
      fail(e, rc == Z_DATA_ERROR ? std::string("has corrupt DEFLATE data")
                                 : "DEFLATE data ends early or does not fit its size " + std::to_string(m));
    if (produced != m)
      fail(e, "inflates to " + std::to_string(produced) + " bytes, the central directory says " + std::to_string(m));
  }

  void check_crc(const Entry& e, const ZipBytes& b) const {
    uLong crc = ::crc32(0L, Z_NULL, 0);
    constexpr std::size_t kChunk = 1u << 30;
    for (std::size_t off = 0; off < b.size; off += kChunk)
      crc = ::crc32(crc, reinterpret_cast<const Bytef*>(b.data + off), static_cast<uInt>(std::min(kChunk, b.size - off)));
    if (static_cast<uint32_t>(crc) != e.crc32) fail(e, "fails its CRC-32 check (corrupted data)");
  }

  std::shared_ptr<MappedFile> file_;
  std::vector<Entry> entries_;
  std::map<std::string, std::size_t> index_;
};

}  // namespace adabldm::io
