#include "kvstore/fault_injection_file_system.h"

#include <cstring>
#include <utility>

#include "absl/strings/match.h"

namespace strata::kvstore {
namespace {

using rocksdb::FileOptions;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

class FaultyWritableFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultyWritableFile(std::unique_ptr<rocksdb::FSWritableFile> target,
                     FaultInjectionFileSystem* fs, std::string fname)
      : FSWritableFileOwnerWrapper(std::move(target)),
        fs_(fs),
        fname_(std::move(fname)) {}

  IOStatus Append(const Slice& data, const IOOptions& options,
                  IODebugContext* dbg) override {
    if (fs_->ShouldFailWrite(fname_)) return NoSpace();
    return FSWritableFileOwnerWrapper::Append(data, options, dbg);
  }
  IOStatus Append(const Slice& data, const IOOptions& options,
                  const rocksdb::DataVerificationInfo& info,
                  IODebugContext* dbg) override {
    if (fs_->ShouldFailWrite(fname_)) return NoSpace();
    return FSWritableFileOwnerWrapper::Append(data, options, info, dbg);
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset,
                            const IOOptions& options,
                            IODebugContext* dbg) override {
    if (fs_->ShouldFailWrite(fname_)) return NoSpace();
    return FSWritableFileOwnerWrapper::PositionedAppend(data, offset, options,
                                                        dbg);
  }
  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    if (fs_->ShouldFailWrite(fname_)) return NoSpace();
    return FSWritableFileOwnerWrapper::Sync(options, dbg);
  }
  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    if (fs_->ShouldFailWrite(fname_)) return NoSpace();
    return FSWritableFileOwnerWrapper::Fsync(options, dbg);
  }

 private:
  static IOStatus NoSpace() {
    return IOStatus::NoSpace("injected ENOSPC (FaultInjectionFileSystem)");
  }
  FaultInjectionFileSystem* const fs_;
  const std::string fname_;
};

class FaultyRandomAccessFile : public rocksdb::FSRandomAccessFileOwnerWrapper {
 public:
  FaultyRandomAccessFile(std::unique_ptr<rocksdb::FSRandomAccessFile> target,
                         FaultInjectionFileSystem* fs, std::string fname)
      : FSRandomAccessFileOwnerWrapper(std::move(target)),
        fs_(fs),
        fname_(std::move(fname)) {}

  IOStatus Read(uint64_t offset, size_t n, const IOOptions& options,
                Slice* result, char* scratch,
                IODebugContext* dbg) const override {
    if (fs_->ShouldFailRead(fname_)) {
      return IOStatus::IOError("injected read error (FaultInjectionFileSystem)");
    }
    IOStatus s = FSRandomAccessFileOwnerWrapper::Read(offset, n, options,
                                                      result, scratch, dbg);
    if (s.ok()) MaybeCorrupt(result, scratch);
    return s;
  }

  IOStatus MultiRead(rocksdb::FSReadRequest* reqs, size_t num_reqs,
                     const IOOptions& options, IODebugContext* dbg) override {
    if (fs_->ShouldFailRead(fname_)) {
      return IOStatus::IOError("injected read error (FaultInjectionFileSystem)");
    }
    IOStatus s =
        FSRandomAccessFileOwnerWrapper::MultiRead(reqs, num_reqs, options, dbg);
    for (size_t i = 0; s.ok() && i < num_reqs; ++i) {
      if (reqs[i].status.ok()) MaybeCorrupt(&reqs[i].result, reqs[i].scratch);
    }
    return s;
  }

 private:
  // Flips the middle byte of a read. The result may point into a buffer the
  // file owns (mmap), so copy into `scratch` first when it is not there.
  void MaybeCorrupt(Slice* result, char* scratch) const {
    if (result->size() < 64 || scratch == nullptr) return;
    if (!fs_->ShouldCorruptRead(fname_)) return;
    if (result->data() != scratch) {
      std::memmove(scratch, result->data(), result->size());
      *result = Slice(scratch, result->size());
    }
    scratch[result->size() / 2] ^= 0x40;
  }
  FaultInjectionFileSystem* const fs_;
  const std::string fname_;
};

}  // namespace

FaultInjectionFileSystem::FaultInjectionFileSystem(
    std::shared_ptr<rocksdb::FileSystem> target)
    : FileSystemWrapper(std::move(target)) {}

void FaultInjectionFileSystem::SetNoSpace(bool enabled, std::string suffix) {
  absl::MutexLock lock(&mu_);
  no_space_ = Fault{enabled, std::move(suffix)};
}
void FaultInjectionFileSystem::SetReadErrors(bool enabled, std::string suffix) {
  absl::MutexLock lock(&mu_);
  read_error_ = Fault{enabled, std::move(suffix)};
}
void FaultInjectionFileSystem::SetHoldWrites(bool enabled, std::string suffix) {
  absl::MutexLock lock(&mu_);
  hold_writes_ = Fault{enabled, std::move(suffix)};
}
int FaultInjectionFileSystem::writes_held() const {
  absl::ReaderMutexLock lock(&mu_);
  return writes_held_;
}
void FaultInjectionFileSystem::SetReadCorruption(bool enabled,
                                                 std::string suffix) {
  absl::MutexLock lock(&mu_);
  corrupt_ = Fault{enabled, std::move(suffix)};
}

bool FaultInjectionFileSystem::Matches(const Fault& fault,
                                       const std::string& fname) const {
  return fault.enabled && absl::EndsWith(fname, fault.suffix);
}

bool FaultInjectionFileSystem::ShouldFailWrite(const std::string& fname) {
  absl::MutexLock lock(&mu_);
  if (Matches(hold_writes_, fname)) {
    ++writes_held_;
    mu_.Await(absl::Condition(
        +[](Fault* hold) { return !hold->enabled; }, &hold_writes_));
    --writes_held_;
  }
  if (!Matches(no_space_, fname)) return false;
  write_faults_.fetch_add(1);
  return true;
}
bool FaultInjectionFileSystem::ShouldFailRead(const std::string& fname) {
  absl::ReaderMutexLock lock(&mu_);
  if (!Matches(read_error_, fname)) return false;
  read_faults_.fetch_add(1);
  return true;
}
bool FaultInjectionFileSystem::ShouldCorruptRead(const std::string& fname) {
  absl::ReaderMutexLock lock(&mu_);
  if (!Matches(corrupt_, fname)) return false;
  corruptions_.fetch_add(1);
  return true;
}

IOStatus FaultInjectionFileSystem::NewWritableFile(
    const std::string& fname, const FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, IODebugContext* dbg) {
  if (ShouldFailWrite(fname)) {
    return IOStatus::NoSpace("injected ENOSPC (FaultInjectionFileSystem)");
  }
  std::unique_ptr<rocksdb::FSWritableFile> file;
  IOStatus s = target()->NewWritableFile(fname, options, &file, dbg);
  if (s.ok()) {
    *result = std::make_unique<FaultyWritableFile>(std::move(file), this, fname);
  }
  return s;
}

IOStatus FaultInjectionFileSystem::ReopenWritableFile(
    const std::string& fname, const FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSWritableFile> file;
  IOStatus s = target()->ReopenWritableFile(fname, options, &file, dbg);
  if (s.ok()) {
    *result = std::make_unique<FaultyWritableFile>(std::move(file), this, fname);
  }
  return s;
}

IOStatus FaultInjectionFileSystem::NewRandomAccessFile(
    const std::string& fname, const FileOptions& options,
    std::unique_ptr<rocksdb::FSRandomAccessFile>* result, IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSRandomAccessFile> file;
  IOStatus s = target()->NewRandomAccessFile(fname, options, &file, dbg);
  if (s.ok()) {
    *result =
        std::make_unique<FaultyRandomAccessFile>(std::move(file), this, fname);
  }
  return s;
}

}  // namespace strata::kvstore
