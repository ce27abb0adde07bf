// FaultInjectionFileSystem: a rocksdb::FileSystem that forwards to a real file
// system and, when told to, fails writes (e.g. ENOSPC), fails reads, or flips
// a byte in data read back. It plugs into SsdTierOptions::file_system, the SSD
// tier's I/O seam. Production code never links it.
//
// Faults apply to files whose name ends with one of the configured suffixes
// (".log" = WAL, ".sst", ".blob"); an empty suffix matches every file.
//
// Thread safety: thread-safe; settings may change while RocksDB runs.
#ifndef STRATA_KVSTORE_FAULT_INJECTION_FILE_SYSTEM_H_
#define STRATA_KVSTORE_FAULT_INJECTION_FILE_SYSTEM_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "rocksdb/file_system.h"

namespace strata::kvstore {

class FaultInjectionFileSystem : public rocksdb::FileSystemWrapper {
 public:
  explicit FaultInjectionFileSystem(
      std::shared_ptr<rocksdb::FileSystem> target =
          rocksdb::FileSystem::Default());

  static const char* kClassName() { return "StrataFaultInjectionFileSystem"; }
  const char* Name() const override { return kClassName(); }

  // Appends, syncs and new-file creation of matching files fail with ENOSPC
  // (IOStatus::NoSpace) while enabled.
  void SetNoSpace(bool enabled, std::string suffix = "");
  // Reads of matching files fail with an I/O error while enabled.
  void SetReadErrors(bool enabled, std::string suffix = "");
  // While enabled, appends, syncs and new-file creation of matching files
  // wait (the thread blocks) until it is disabled: holds a write in flight
  // so a test can act meanwhile. writes_held() counts the waiting ones.
  void SetHoldWrites(bool enabled, std::string suffix = "");
  int writes_held() const;
  // Reads of matching files return data with one byte flipped (the middle
  // byte of each read of at least 64 bytes) while enabled.
  void SetReadCorruption(bool enabled, std::string suffix = "");

  // How many operations each fault has failed or corrupted so far.
  uint64_t injected_write_faults() const { return write_faults_.load(); }
  uint64_t injected_read_faults() const { return read_faults_.load(); }
  uint64_t injected_corruptions() const { return corruptions_.load(); }

  // Decisions the wrapped files ask for.
  bool ShouldFailWrite(const std::string& fname);
  bool ShouldFailRead(const std::string& fname);
  bool ShouldCorruptRead(const std::string& fname);

  rocksdb::IOStatus NewWritableFile(
      const std::string& fname, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(
      const std::string& fname, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewRandomAccessFile(
      const std::string& fname, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSRandomAccessFile>* result,
      rocksdb::IODebugContext* dbg) override;

 private:
  struct Fault {
    bool enabled = false;
    std::string suffix;
  };
  bool Matches(const Fault& fault, const std::string& fname) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  Fault no_space_ ABSL_GUARDED_BY(mu_);
  Fault read_error_ ABSL_GUARDED_BY(mu_);
  Fault corrupt_ ABSL_GUARDED_BY(mu_);
  Fault hold_writes_ ABSL_GUARDED_BY(mu_);
  int writes_held_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> write_faults_{0};
  std::atomic<uint64_t> read_faults_{0};
  std::atomic<uint64_t> corruptions_{0};
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_FAULT_INJECTION_FILE_SYSTEM_H_
