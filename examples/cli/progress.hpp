#pragma once
// Progress lines with an ETA on stderr (one line, rewritten in place on a terminal), silenced by --quiet.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace cli {

class Progress {
 public:
  Progress(int total, bool quiet) : total_(total), quiet_(quiet), tty_(::isatty(2) != 0), start_(clock::now()) {}
  /// `done` units of `total` finished; `what` describes the current unit.
  void update(double done, const std::string& what) {
    if (quiet_) return;
    const double elapsed = std::chrono::duration<double>(clock::now() - start_).count();
    const double eta = done > 0 ? elapsed * (total_ - done) / done : 0.0;
    std::fprintf(stderr, "%s[%5.1f%%] %s  elapsed %s  ETA %s%s", tty_ ? "\r" : "", 100.0 * done / total_, what.c_str(),
                 format(elapsed).c_str(), done > 0 ? format(eta).c_str() : "?", tty_ ? "   " : "\n");
    std::fflush(stderr);
  }
  void finish(const std::string& what) {
    if (quiet_) return;
    const double elapsed = std::chrono::duration<double>(clock::now() - start_).count();
    std::fprintf(stderr, "%s%s in %s\n", tty_ ? "\r" : "", what.c_str(), format(elapsed).c_str());
  }
  /// A warning: printed even with --quiet (a failed sample, a skipped step), never overwritten.
  void warn(const std::string& msg) {
    std::fprintf(stderr, "%swarning: %s\n", tty_ && !quiet_ ? "\r" : "", msg.c_str());
    std::fflush(stderr);
  }
  /// A message that must not be overwritten.
  void note(const std::string& msg) {
    if (!quiet_) std::fprintf(stderr, "%s%s\n", tty_ ? "\r" : "", msg.c_str());
  }
  static std::string format(double s) {
    char buf[32];
    if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
    else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
    else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, int(s) % 3600 / 60);
    return buf;
  }

 private:
  using clock = std::chrono::steady_clock;
  int total_;
  bool quiet_, tty_;
  clock::time_point start_;
};

}  // namespace cli
