#include "kvstore/ssd_tier.h"

#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/write_batch.h"

namespace strata::kvstore {
namespace {

constexpr char kMetaFamily[] = "meta";

// Maps a RocksDB status to the canonical code a Strata caller acts on.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat("ssd tier: ", what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsIOError()) return absl::UnavailableError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

rocksdb::Slice KeySlice(const std::string& bytes) {
  return rocksdb::Slice(bytes.data(), bytes.size());
}

constexpr uint8_t kMetaVersion = 1;
constexpr size_t kMaxLabelBytes = 0xFFFF;

template <typename T>
void Append(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

std::string EncodeMeta(uint64_t size, const BlockMeta& meta) {
  std::string out;
  out.reserve(1 + 8 + 8 + 4 + meta.tenant.size() + meta.model.size());
  Append<uint8_t>(out, kMetaVersion);
  Append<uint64_t>(out, size);
  Append<int64_t>(out, meta.stored_at_unix_ms);
  Append<uint16_t>(out, static_cast<uint16_t>(meta.tenant.size()));
  out.append(meta.tenant);
  Append<uint16_t>(out, static_cast<uint16_t>(meta.model.size()));
  out.append(meta.model);
  return out;
}

// False when `in` is not a well-formed version-1 meta record.
bool DecodeMeta(rocksdb::Slice in, uint64_t* size, BlockMeta* meta) {
  const char* p = in.data();
  const char* end = p + in.size();
  auto take = [&](void* dst, size_t n) {
    if (static_cast<size_t>(end - p) < n) return false;
    std::memcpy(dst, p, n);
    p += n;
    return true;
  };
  auto take_string = [&](std::string* dst) {
    uint16_t n;
    if (!take(&n, sizeof(n)) || static_cast<size_t>(end - p) < n) return false;
    dst->assign(p, n);
    p += n;
    return true;
  };
  uint8_t version;
  return take(&version, 1) && version == kMetaVersion && take(size, 8) &&
         take(&meta->stored_at_unix_ms, 8) && take_string(&meta->tenant) &&
         take_string(&meta->model) && p == end;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SsdTier>> SsdTier::Open(
    const SsdTierOptions& options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("ssd_path: must not be empty");
  }
  if (options.capacity_bytes == 0) {
    return absl::InvalidArgumentError("ssd_capacity_bytes: must be > 0");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat(
        "ssd_path: cannot create ", options.path, ": ", ec.message()));
  }

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  // Without paranoid checks a WAL write that hit ENOSPC is a recoverable
  // error: Resume() succeeds once space returns. Block integrity does not
  // depend on it: every read verifies RocksDB checksums and the block's own.
  db_options.paranoid_checks = false;
  db_options.max_background_jobs = 2;
  std::unique_ptr<rocksdb::Env> env;
  if (options.file_system != nullptr) {
    env = rocksdb::NewCompositeEnv(options.file_system);
    db_options.env = env.get();
  }

  rocksdb::ColumnFamilyOptions blocks_options;
  blocks_options.compression = rocksdb::kNoCompression;  // KV does not compress.
  blocks_options.enable_blob_files = true;
  blocks_options.min_blob_size = options.min_blob_bytes;
  blocks_options.blob_file_size = uint64_t{256} << 20;
  blocks_options.blob_compression_type = rocksdb::kNoCompression;
  blocks_options.enable_blob_garbage_collection = true;
  blocks_options.write_buffer_size = options.write_buffer_bytes;
  blocks_options.max_write_buffer_number = 4;
  rocksdb::ColumnFamilyOptions meta_options;
  meta_options.compression = rocksdb::kNoCompression;

  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, blocks_options},
      {kMetaFamily, meta_options},
  };
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw_db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path, families,
                                        &handles, &raw_db);
  if (!s.ok()) {
    absl::Status st = FromRocks(s, absl::StrCat("open ", options.path));
    if (absl::IsNotFound(st)) st = absl::UnavailableError(st.message());
    return st;
  }
  std::unique_ptr<rocksdb::DB> db(raw_db);
  auto tier = std::unique_ptr<SsdTier>(
      new SsdTier(std::move(db), std::move(handles), options));
  tier->env_ = std::move(env);
  // Rebuild the usage counter from the meta family.
  STRATA_ASSIGN_OR_RETURN(auto blocks, tier->ListBlocks());
  uint64_t used = 0;
  for (const StoredBlock& b : blocks) used += b.size;
  tier->used_bytes_.store(used, std::memory_order_relaxed);
  return tier;
}

SsdTier::SsdTier(std::unique_ptr<rocksdb::DB> db,
                 std::vector<rocksdb::ColumnFamilyHandle*> handles,
                 const SsdTierOptions& options)
    : db_(std::move(db)),
      blocks_cf_(handles[0]),
      meta_cf_(handles[1]),
      capacity_bytes_(options.capacity_bytes),
      sync_writes_(options.sync_writes) {}

SsdTier::~SsdTier() {
  if (db_ != nullptr) {
    db_->DestroyColumnFamilyHandle(meta_cf_).PermitUncheckedError();
    db_->DestroyColumnFamilyHandle(blocks_cf_).PermitUncheckedError();
    db_->Close().PermitUncheckedError();
    db_.reset();
  }
}

absl::Status SsdTier::ResumeAfterError() {
  if (!needs_resume_.load(std::memory_order_acquire)) return absl::OkStatus();
  rocksdb::Status s = db_->Resume();
  if (!s.ok()) return FromRocks(s, "resume after disk error");
  needs_resume_.store(false, std::memory_order_release);
  return absl::OkStatus();
}

absl::Status SsdTier::Write(const BlockKey& key,
                            absl::Span<const uint8_t> block,
                            const BlockMeta& meta) {
  const uint64_t size = block.size();
  if (meta.tenant.size() > kMaxLabelBytes || meta.model.size() > kMaxLabelBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        meta.tenant.size() > kMaxLabelBytes ? "tenant" : "model",
        ": label longer than ", kMaxLabelBytes, " bytes"));
  }
  // Reserve capacity first, so concurrent writers never overshoot it.
  uint64_t used = used_bytes_.load(std::memory_order_relaxed);
  do {
    if (used + size > capacity_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "ssd tier: full (", used, " of ", capacity_bytes_,
          " bytes used, block is ", size, ")"));
    }
  } while (!used_bytes_.compare_exchange_weak(used, used + size,
                                              std::memory_order_relaxed));
  auto release = [&] {
    used_bytes_.fetch_sub(size, std::memory_order_relaxed);
    releases_.fetch_add(1, std::memory_order_release);
  };

  if (absl::Status st = ResumeAfterError(); !st.ok()) {
    release();
    return absl::IsResourceExhausted(st) ? st : absl::UnavailableError(st.message());
  }
  const std::string key_bytes = key.ToBytesString();
  std::string exists;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), meta_cf_, KeySlice(key_bytes), &exists);
  if (s.ok()) {
    release();
    return absl::FailedPreconditionError(
        absl::StrCat("key: ", key.ToHex(), " is already in the ssd tier"));
  }
  const std::string meta_record = EncodeMeta(size, meta);
  rocksdb::WriteBatch batch;
  s = batch.Put(blocks_cf_, KeySlice(key_bytes),
                rocksdb::Slice(reinterpret_cast<const char*>(block.data()),
                               block.size()));
  if (s.ok()) {
    s = batch.Put(meta_cf_, KeySlice(key_bytes), KeySlice(meta_record));
  }
  if (s.ok()) {
    rocksdb::WriteOptions write_options;
    write_options.sync = sync_writes_;
    s = db_->Write(write_options, &batch);
  }
  if (!s.ok()) {
    release();
    if (s.IsIOError() || s.IsNoSpace()) {
      needs_resume_.store(true, std::memory_order_release);
    }
    absl::Status st = FromRocks(s, absl::StrCat("write ", key.ToHex()));
    if (absl::IsDataLoss(st)) st = absl::UnavailableError(st.message());
    return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<BlockBytes> SsdTier::Read(const BlockKey& key) {
  const std::string key_bytes = key.ToBytesString();
  auto value = std::make_shared<rocksdb::PinnableSlice>();
  // RocksDB's own CRC32c (software-only in Debian's build, ~1.3 GB/s) is
  // redundant here: the TieredStore verifies every block's XXH3 checksum
  // before any byte leaves the store, and that also catches a wrong blob.
  rocksdb::ReadOptions read_options;
  read_options.verify_checksums = false;
  rocksdb::Status s = db_->Get(read_options, blocks_cf_, KeySlice(key_bytes),
                               value.get());
  if (!s.ok()) return FromRocks(s, absl::StrCat("read ", key.ToHex()));
  absl::Span<const uint8_t> bytes(
      reinterpret_cast<const uint8_t*>(value->data()), value->size());
  return BlockBytes{std::move(value), bytes};
}

absl::Status SsdTier::Erase(const BlockKey& key) {
  const std::string key_bytes = key.ToBytesString();
  std::string record;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), meta_cf_, KeySlice(key_bytes), &record);
  if (s.IsNotFound()) return absl::OkStatus();
  if (!s.ok()) return FromRocks(s, absl::StrCat("erase ", key.ToHex()));
  uint64_t size = 0;
  BlockMeta meta;
  if (!DecodeMeta(record, &size, &meta)) size = 0;
  STRATA_RETURN_IF_ERROR(ResumeAfterError());
  rocksdb::WriteBatch batch;
  s = batch.Delete(blocks_cf_, KeySlice(key_bytes));
  if (s.ok()) s = batch.Delete(meta_cf_, KeySlice(key_bytes));
  if (s.ok()) {
    rocksdb::WriteOptions write_options;
    write_options.sync = sync_writes_;
    s = db_->Write(write_options, &batch);
  }
  if (!s.ok()) {
    if (s.IsIOError() || s.IsNoSpace()) {
      needs_resume_.store(true, std::memory_order_release);
    }
    return FromRocks(s, absl::StrCat("erase ", key.ToHex()));
  }
  used_bytes_.fetch_sub(size, std::memory_order_relaxed);
  releases_.fetch_add(1, std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StoredBlock>> SsdTier::ListBlocks() {
  std::vector<StoredBlock> out;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), meta_cf_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    rocksdb::Slice k = it->key();
    rocksdb::Slice v = it->value();
    auto key = BlockKey::FromBytes(std::string(k.data(), k.size()));
    StoredBlock block;
    if (!key.ok() || !DecodeMeta(v, &block.size, &block.meta)) {
      return absl::DataLossError(absl::StrCat(
          "ssd tier: malformed entry in the meta column family (key ",
          k.size(), " bytes, value ", v.size(), " bytes)"));
    }
    block.key = *key;
    out.push_back(std::move(block));
  }
  STRATA_RETURN_IF_ERROR(FromRocks(it->status(), "list blocks"));
  return out;
}

absl::Status SsdTier::Flush() {
  rocksdb::FlushOptions flush_options;
  flush_options.wait = true;
  return FromRocks(db_->Flush(flush_options, {blocks_cf_, meta_cf_}), "flush");
}

}  // namespace strata::kvstore
