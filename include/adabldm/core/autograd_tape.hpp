#pragma once
// The tape: what the differentiable ops recorded while a TrainingScope was active, replayed backwards by
// autograd::backward. Untyped (records hold closures), so it does not need Tensor.
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "adabldm/core/autograd_meta.hpp"

namespace adabldm::autograd {

/// One recorded op: the Meta of the tensor(s) it produced and a closure that reads their gradients and adds
/// the inputs' gradients to the inputs' Meta. The closure owns what the backward needs (saved tensors,
/// statistics) and is destroyed as soon as it has run.
struct Record {
  const char* op = "";
  std::vector<std::shared_ptr<Meta>> outputs;
  std::function<void()> backward;
};

/// Makes `tape` (or null: no recording) the thread's active tape for the guard's lifetime.
class ActiveTapeGuard {
 public:
  explicit ActiveTapeGuard(Tape* tape) noexcept : previous_(detail::active_tape_slot()) {
    detail::active_tape_slot() = tape;
  }
  ~ActiveTapeGuard() { detail::active_tape_slot() = previous_; }
  ActiveTapeGuard(const ActiveTapeGuard&) = delete;
  ActiveTapeGuard& operator=(const ActiveTapeGuard&) = delete;

 private:
  Tape* previous_;
};

class Tape {
 public:
  Tape() = default;
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;

  void push(Record r) { records_.push_back(std::move(r)); }
  std::size_t size() const noexcept { return records_.size(); }
  bool empty() const noexcept { return records_.empty(); }
  /// Drops every record (and what it saved) without running it.
  void clear() noexcept { records_.clear(); }
  const std::vector<Record>& records() const noexcept { return records_; }

  /// Runs the records from the last to the first with recording switched off. A record whose outputs got no
  /// gradient is skipped. Right after a record has run, it is destroyed (freeing what it saved) and the
  /// gradients of its outputs are released unless they keep them (leaves). Leaves the tape empty.
  void run_backward() {
    ActiveTapeGuard no_recording(nullptr);
    struct ClearOnExit {
      Tape& t;
      ~ClearOnExit() { t.clear(); }
    } clear_on_exit{*this};
    for (std::size_t i = records_.size(); i-- > 0;) {
      Record r = std::move(records_[i]);
      records_.pop_back();
      bool reached = false;
      for (const auto& m : r.outputs) reached = reached || (m && m->grad);
      if (!reached) continue;
      // A kept gradient is handed to the closure by reference; mark it shared so that no later accumulation
      // adds into a buffer an input's gradient may now alias.
      for (const auto& m : r.outputs)
        if (m && m->keep_grad) m->grad_shared = true;
      r.backward();
      r.backward = nullptr;
      for (const auto& m : r.outputs)
        if (m && !m->keep_grad) {
          m->grad.reset();
          m->grad_type = nullptr;
        }
    }
  }

 private:
  std::vector<Record> records_;
};

/// Records differentiable ops on its own tape while alive: only inside a TrainingScope do ops with inputs that
/// require a gradient build the tape (everywhere else they cost one branch). Scopes nest; the innermost wins.
class TrainingScope {
 public:
  TrainingScope() : guard_(&tape_) {}
  Tape& tape() noexcept { return tape_; }

 private:
  Tape tape_;  // declared first: destroyed after the guard has restored the previous tape
  ActiveTapeGuard guard_;
};

/// Switches recording off while alive (an evaluation pass inside a training loop; checkpointed forwards).
class NoGradScope {
 public:
  NoGradScope() : guard_(nullptr) {}

 private:
  ActiveTapeGuard guard_;
};

}  // namespace adabldm::autograd
