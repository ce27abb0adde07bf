// The message channel of a local connection (docs/protocol.md, "Local
// connections", "The message channel"): a page of shared memory beside the
// connection's Unix socket, created by the daemon for one connection
// (MAP_CHANNEL) and mapped by both ends, through which the small messages
// of in-arena puts and gets (RESERVE, COMMIT, PUT_SPARE, RELEASE, GET with
// kRequestInArena; and PING) and their replies go instead of the socket.
// The memfd is sealed at its size (a client cannot shrink it under the
// daemon). A waiting
// end polls the shared sequence number instead of sleeping in a syscall, so
// a message that comes while it polls costs no syscall on either side and
// no wake-up. The socket stays the connection: it carries everything else,
// the doorbells that wake an end that went to sleep on it, and its closing
// ends the connection (and the channel) as before.
//
// The bytes of a message are exactly those it has on the socket: a
// tcp::TcpFrame, the header, the data (common/tcp_protocol.h).
//
// One slot per direction, one message in it at a time. The client first
// waits until the daemon has `taken` its previous request (at once, unless
// that was a RELEASE, which has no reply; our client releases through the
// `release` word instead; the reply slot's `taken` is unused), fills `bytes`
// and `length`, then stores `seq` (requests are numbered 1, 2, ...,
// NextRequestNumber; a reply carries its request's number); a reader that sees
// a new `seq` copies the message out before it parses it (the other process may
// write the page at any time: nothing in it is trusted), then stores `taken`.
// Lost wake-ups are ruled out Dekker-style: the writer stores `seq`, then loads
// `reader_asleep`; the reader stores `reader_asleep`, then loads `seq` (both
// sequentially consistent), so at least one of them sees the other's store, and
// a reader that goes to sleep in recv gets a doorbell (a frame with
// kDoorbellMagic and nothing after it). A doorbell may come late, after its
// reader saw the message anyway: readers skip doorbells wherever they read a
// frame.
//
// A reply that does not fit (a GET of a block not in the arena, which comes
// as bytes; any reply over kChannelMessageBytes) goes on the socket; the
// channel's reply, posted first, then has length kReplyOnSocket, and the
// client reads the reply from the socket.
//
// Header-only; the layout is shared by both processes of one host.
#ifndef STRATA_COMMON_LOCAL_CHANNEL_H_
#define STRATA_COMMON_LOCAL_CHANNEL_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <thread>

#include "absl/time/time.h"
#include "common/socket_io.h"
#include "common/tcp_protocol.h"

namespace strata::local {

inline constexpr uint32_t kChannelMagic = 0x4E484353;  // "SCHN"
inline constexpr uint32_t kChannelVersion = 1;
// A message of more bytes goes on the socket.
inline constexpr size_t kChannelMessageBytes = 4096 - 16;
// ChannelSlot::length of a reply sent on the socket instead.
inline constexpr uint32_t kReplyOnSocket = 0xFFFFFFFFu;

static_assert(std::atomic<uint32_t>::is_always_lock_free,
              "channel atomics are shared between processes");

// One direction.
struct alignas(64) ChannelSlot {
  // The number of the last message written here; 0: none yet.
  std::atomic<uint32_t> seq;
  // 1 while the reader of this slot sleeps in recv on the socket: a writer
  // that sees it sends a doorbell.
  std::atomic<uint32_t> reader_asleep;
  // The number of the last message the reader copied out: the writer does
  // not write the slot again before (a RELEASE has no reply, so the next
  // request could otherwise overwrite it while the daemon copies it).
  std::atomic<uint32_t> taken;
  // Bytes of the message, or kReplyOnSocket. Relaxed: `seq` orders it.
  std::atomic<uint32_t> length;
  uint8_t bytes[kChannelMessageBytes];
};

struct LocalChannel {
  uint32_t magic;    // kChannelMagic.
  uint32_t version;  // kChannelVersion.
  // The number of an in-arena GET whose lease the client is done with
  // (instead of a RELEASE message; the client rings a sleeping daemon).
  std::atomic<uint32_t> release;
  ChannelSlot request;  // Client -> daemon.
  ChannelSlot reply;    // Daemon -> client.
};

inline constexpr size_t kChannelBytes = sizeof(LocalChannel);

// After a sequentially consistent store that the reader of `slot` must see
// (its `seq`, or the channel's `release`): rings that reader with a
// doorbell on the connection's socket `fd` if it sleeps there (the other
// half of the Dekker pairing: it stores reader_asleep, then loads).
inline sockio::Io RingIfAsleep(int fd, const ChannelSlot& slot,
                               absl::Time deadline = absl::InfiniteFuture()) {
  if (slot.reader_asleep.load(std::memory_order_seq_cst) == 0) {
    return sockio::Io::kOk;
  }
  tcp::TcpFrame doorbell{tcp::kDoorbellMagic, 0, 0};
  iovec bell{&doorbell, sizeof(doorbell)};
  return sockio::SendAll(fd, &bell, 1, deadline);
}

// Requests are numbered 1, 2, ...; 0 is skipped when the count wraps (0 is
// a fresh page's "none yet", in `seq`, `taken` and `release`).
inline uint32_t NextRequestNumber(uint32_t previous) {
  return previous + 1 != 0 ? previous + 1 : 1;
}

// The layout of version 1 (docs/protocol.md, "The message channel").
static_assert(offsetof(ChannelSlot, taken) == 8);
static_assert(offsetof(ChannelSlot, length) == 12);
static_assert(offsetof(ChannelSlot, bytes) == 16);
static_assert(sizeof(ChannelSlot) == 4096);
static_assert(offsetof(LocalChannel, release) == 8);
static_assert(offsetof(LocalChannel, request) == 64);
static_assert(offsetof(LocalChannel, reply) == 64 + 4096);
static_assert(kChannelBytes == 8256);

// How many client threads of one process may poll channels at once (each
// waiting call polls its own channel, yielding the core between rounds; the
// others sleep on their sockets until rung): twice the machine's cores.
// (The daemon's end is polled by one thread for every channel: the channel
// poller of cluster/tcp_data_plane.h.) Polling a
// word costs no syscall and a poller gives its core away every round, so
// unlike polling sockets it pays with several calls in flight: 256 KiB
// with 4 clients on the 2-vCPU VM (7 alternated rounds), puts median 11.6
// GB/s and gets 12.7 with every thread polling (cap 4) against 9.8 and 10.3
// with the cap at the cores (2), and lower again with one poller per
// process; p99 fell too (bench/results/service.md, session 11). The
// environment variable STRATA_CHANNEL_POLLERS overrides it (measurements).
inline int ChannelPollers() {
  static const int pollers = [] {
    const char* env = std::getenv("STRATA_CHANNEL_POLLERS");
    if (env != nullptr) return std::atoi(env);
    return std::max(2,
                    2 * static_cast<int>(std::thread::hardware_concurrency()));
  }();
  return pollers;
}

// Admits one poller while fewer than ChannelPollers() poll.
class ChannelPollerSlot {
 public:
  explicit ChannelPollerSlot(std::atomic<int>& pollers) : pollers_(pollers) {
    admitted_ =
        pollers_.fetch_add(1, std::memory_order_acq_rel) < ChannelPollers();
  }
  ~ChannelPollerSlot() { pollers_.fetch_sub(1, std::memory_order_acq_rel); }
  ChannelPollerSlot(const ChannelPollerSlot&) = delete;
  ChannelPollerSlot& operator=(const ChannelPollerSlot&) = delete;
  bool admitted() const { return admitted_; }

 private:
  std::atomic<int>& pollers_;
  bool admitted_ = false;
};

}  // namespace strata::local

#endif  // STRATA_COMMON_LOCAL_CHANNEL_H_
