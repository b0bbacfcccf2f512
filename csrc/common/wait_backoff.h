// How a data wait passes the time between two tests of what it waits for: spin, then yield,
// then nap.
//
// Spinning keeps a wait for a peer that is close behind at microseconds. Yielding lets a thread
// that this one waits for have the core when ranks outnumber cores. But a thread that yields
// in a loop stays runnable, and several of them (every rank's waiting thread, on 2 cores) kept
// the waited-for work from running: on the testbed (4 ranks on 2 cores, TCP between namespaces)
// transfers of any size stalled for 3-45 s several times a run, until the waits napped after
// a few milliseconds without progress (docs/testbed.md, "Stalls in the waits that only
// yielded"). A wait that makes progress never naps, so a transfer that completes in pieces
// keeps the fast path.
#pragma once

#include <chrono>
#include <thread>

namespace fusecomm {

class WaitBackoff {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr auto kYieldFor = std::chrono::milliseconds(5);
  static constexpr auto kNap = std::chrono::microseconds(50);

  explicit WaitBackoff(int spin_rounds) : spin_rounds_(spin_rounds) {}

  // Something the wait was waiting for happened: spin again next time.
  void Progress() {
    rounds_ = 0;
    napping_ = false;
  }

  // Nothing new since the last test.
  void Pause() {
    if (napping_) {
      std::this_thread::sleep_for(kNap);
      return;
    }
    ++rounds_;
    if (rounds_ <= spin_rounds_) return;
    // Reading the clock costs as much as a test: only every 64th round.
    if (rounds_ == spin_rounds_ + 1) {
      yielding_since_ = Clock::now();
    } else if (rounds_ % 64 == 0 && Clock::now() - yielding_since_ > kYieldFor) {
      napping_ = true;
    }
    std::this_thread::yield();
  }

  // Past spinning: the caller may read the clock for its own deadline this round.
  bool CheckDeadlineNow() const {
    return rounds_ > spin_rounds_ && (napping_ || rounds_ % 64 == 0);
  }

 private:
  const int spin_rounds_;
  int rounds_ = 0;
  bool napping_ = false;
  Clock::time_point yielding_since_;
};

}  // namespace fusecomm
