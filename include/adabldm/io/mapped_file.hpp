#pragma once
// A read-only view of a whole file, memory-mapped copy-on-write (MAP_PRIVATE): tensors can alias it without a
// copy and may even be modified in memory without touching the file.
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adabldm/core/error.hpp"

namespace adabldm::io {

class MappedFile {
 public:
  /// Maps `path`; an empty file maps to size 0 and a null pointer.
  static std::shared_ptr<MappedFile> open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw IoError(path + ": cannot open (" + std::strerror(errno) + ")");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw IoError(path + ": not a regular file");
    }
    auto mf = std::shared_ptr<MappedFile>(new MappedFile());
    mf->path_ = path;
    mf->size_ = static_cast<std::size_t>(st.st_size);
    if (mf->size_ > 0) {
      void* p = ::mmap(nullptr, mf->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        throw IoError(path + ": cannot map (" + std::strerror(e) + ")");
      }
      mf->data_ = static_cast<std::byte*>(p);
    }
    ::close(fd);
    return mf;
  }
  ~MappedFile() {
    if (data_) ::munmap(data_, size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const noexcept { return path_; }
  std::size_t size() const noexcept { return size_; }
  std::byte* data() const noexcept { return data_; }

 private:
  MappedFile() = default;
  std::string path_;
  std::size_t size_ = 0;
  std::byte* data_ = nullptr;
};

/// Writes `bytes` to `path` atomically: a temporary name in the same folder, then rename (no partial files).
inline void write_file_atomic(const std::string& path, const void* bytes, std::size_t n);

/// Writes a file atomically from a callback that fills an open FILE*.
template <class F>
void write_file_atomic_with(const std::string& path, F&& fill) {
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw IoError(path + ": cannot write (" + std::strerror(errno) + ")");
  bool ok = false;
  try {
    ok = fill(f);
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  ok = ok && std::fflush(f) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    throw IoError(path + ": write failed (" + std::strerror(e) + ")");
  }
}

inline void write_file_atomic(const std::string& path, const void* bytes, std::size_t n) {
  write_file_atomic_with(path, [&](FILE* f) { return std::fwrite(bytes, 1, n, f) == n; });
}

}  // namespace adabldm::io
