#include "tests/cluster/cluster_load.h"

#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::testing {

using ::strata::kvstore::testing::KeyFor;

std::string ClusterLoad::Counts::ToString() const {
  return absl::StrCat("reads ", reads, " (failed ", read_failures, ", wrong ",
                      wrong_bytes, ", ", from_replica,
                      " served by a replica), writes ", writes, " (failed ",
                      write_failures, ")");
}

ClusterLoad::ClusterLoad(
    cluster::ClusterClient* cluster,
    std::function<std::vector<uint8_t>(uint64_t)> block_for, Options options)
    : cluster_(cluster),
      block_for_(std::move(block_for)),
      options_(std::move(options)) {}

ClusterLoad::~ClusterLoad() { Stop(); }

void ClusterLoad::AddWritten(int i, std::vector<std::string> acked) {
  absl::MutexLock lock(&mu_);
  keys_.push_back(i);
  acked_[i] = std::move(acked);
}

void ClusterLoad::Start() {
  for (uint32_t seed : options_.reader_seeds) {
    threads_.emplace_back([this, seed] { Read(seed); });
  }
  threads_.emplace_back([this] { Write(); });
}

bool ClusterLoad::WaitHalfway(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&paused_), timeout);
}

void ClusterLoad::ResumeWriter() {
  absl::MutexLock lock(&mu_);
  resumed_ = true;
}

void ClusterLoad::Stop() {
  stop_ = true;
  ResumeWriter();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

ClusterLoad::Counts ClusterLoad::counts() const {
  Counts c;
  c.reads = reads_;
  c.read_failures = read_failures_;
  c.wrong_bytes = wrong_bytes_;
  c.from_replica = from_replica_;
  c.writes = writes_;
  c.write_failures = write_failures_;
  absl::MutexLock lock(&mu_);
  c.failure_samples = failure_samples_;
  return c;
}

std::map<int, std::vector<std::string>> ClusterLoad::written() const {
  absl::MutexLock lock(&mu_);
  return acked_;
}

void ClusterLoad::Read(uint32_t seed) {
  std::mt19937 rng(seed);
  while (!stop_) {
    int i;
    {
      absl::MutexLock lock(&mu_);
      i = keys_[rng() % keys_.size()];
    }
    auto got = cluster_->Get(KeyFor(i));
    ++reads_;
    if (got.ok()) {
      if (got->get.block != block_for_(i)) ++wrong_bytes_;
      if (got->owner_rank > 0) ++from_replica_;  // The primary failed.
    } else {
      ++read_failures_;
      absl::MutexLock lock(&mu_);
      if (failure_samples_.size() < 5) {
        failure_samples_.push_back(absl::StrCat(i, ": ", got.status().ToString()));
      }
    }
  }
}

void ClusterLoad::Write() {
  const int begin = options_.first_write, end = begin + options_.max_writes;
  for (int i = begin; !stop_ && i < end; ++i) {
    if (options_.pause_halfway && i == begin + options_.max_writes / 2) {
      absl::MutexLock lock(&mu_);
      paused_ = true;
      mu_.Await(absl::Condition(&resumed_));
    }
    auto put = cluster_->Put(KeyFor(i), block_for_(i));
    ++writes_;
    if (!put.ok()) {
      ++write_failures_;
      continue;
    }
    absl::MutexLock lock(&mu_);
    keys_.push_back(i);
    acked_[i] = put->acked;
  }
}

}  // namespace strata::testing
