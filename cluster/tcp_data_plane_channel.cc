// TcpDataPlane's message channels (common/local_channel.h) and the channel
// poller that serves them. The contract is in tcp_data_plane.h; the wire in
// docs/protocol.md, "The message channel".
//
// Who serves a channel request: the poller, while it runs (it polls every
// channel, TryLocking each connection's serve_mu, and never blocks), or the
// connection's own thread, after a doorbell (the poller slept and marked
// the channel asleep) or when the poller handed the request back (it
// would have blocked). Whoever serves holds serve_mu, and compares the
// request's number with channel_seq under it, so a request is served once.
//
// The poller owns every channel's request.reader_asleep: it clears the
// flag while it polls, and sets it (checking for a request after, the
// Dekker pairing of local_channel.h) before it sleeps. A channel it cannot
// lock then (its thread is serving a socket request) is left unmarked, and
// the poller naps for kNapTime instead of sleeping, then tries again.
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster/log.h"
#include "cluster/tcp_data_plane.h"
#include "common/sealed_memfd.h"
#include "common/socket_io.h"
#include "common/steady_time.h"
#include "common/tcp_protocol.h"

namespace strata::cluster {
namespace {

using sockio::Io;

// How long the poller waits before trying again to mark every channel
// asleep, when a connection's thread held one.
constexpr absl::Duration kNapTime = absl::Milliseconds(1);

constexpr tcp::TcpFrame kDoorbell{tcp::kDoorbellMagic, 0, 0};

}  // namespace

// ---- Channel set-up and messages.

bool TcpDataPlane::SendChannel(Connection& c, const DataRequest& req) {
  if (absl::Status s = ArenaAccess(c); !s.ok()) {
    return AnswerStatus(c, req, s, 0);
  }
  if (c.channel != nullptr) {
    return AnswerStatus(c, req,
                        absl::FailedPreconditionError(
                            "op: this connection has its message channel"),
                        0);
  }
  // Sealed at its size: the client cannot shrink it under this thread.
  const int fd = SealedMemfd("strata-channel", local::kChannelBytes);
  void* mapped = MAP_FAILED;
  if (fd >= 0) {
    mapped = mmap(nullptr, local::kChannelBytes, PROT_READ | PROT_WRITE,
                  MAP_SHARED, fd, 0);
  }
  if (mapped == MAP_FAILED) {
    const int error = errno;
    if (fd >= 0) close(fd);
    return AnswerStatus(c, req,
                        absl::ResourceExhaustedError(absl::StrCat(
                            "channel: cannot create the message channel: ",
                            std::strerror(error))),
                        0);
  }
  const int handback_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (handback_fd < 0) {
    const int error = errno;
    munmap(mapped, local::kChannelBytes);
    close(fd);
    return AnswerStatus(c, req,
                        absl::ResourceExhaustedError(absl::StrCat(
                            "channel: cannot create the message channel: ",
                            std::strerror(error))),
                        0);
  }
  // A fresh memfd reads as zeros: no message in either slot.
  c.channel = new (mapped) local::LocalChannel();
  c.channel->magic = local::kChannelMagic;
  c.channel->version = local::kChannelVersion;
  c.channel_seq = 0;
  c.handback_fd = handback_fd;
  // Asleep until the poller finds it: its client rings meanwhile, so a
  // request is served even if the poller never runs.
  c.channel->request.reader_asleep.store(1, std::memory_order_seq_cst);
  c.marked_asleep = true;
  AddChannel(c.shared_from_this());
  const bool sent = SendFramed(
      c.fd, ReplyHeaderBytes(req.op, req.request_id, absl::OkStatus(), 0), {},
      fd);
  close(fd);  // The mapping stays until the connection closes.
  return sent;
}

void TcpDataPlane::DropReleasedLease(Connection& c) {
  if (c.lease.has_value() && c.lease_seq != 0 &&
      c.channel->release.load(std::memory_order_seq_cst) == c.lease_seq) {
    c.lease.reset();
    c.lease_seq = 0;
  }
}

bool TcpDataPlane::TakeChannelRequest(Connection& c, tcp::TcpFrame* frame,
                                      std::vector<uint8_t>* header) {
  local::ChannelSlot& slot = c.channel->request;
  c.channel_seq = slot.seq.load(std::memory_order_acquire);
  // Copied out before anything is looked at: the client may write the page
  // at any time.
  const uint32_t length = slot.length.load(std::memory_order_relaxed);
  if (length < sizeof(*frame) || length > local::kChannelMessageBytes) {
    return false;
  }
  c.channel_message.assign(slot.bytes, slot.bytes + length);
  // The client may write the slot again (its next request after a RELEASE).
  slot.taken.store(c.channel_seq, std::memory_order_release);
  std::memcpy(frame, c.channel_message.data(), sizeof(*frame));
  if (frame->magic != tcp::kFrameMagic ||
      frame->header_length < kMinAnswerableHeaderBytes ||
      frame->header_length > length - sizeof(*frame) ||
      frame->data_length != length - sizeof(*frame) - frame->header_length) {
    return false;  // Framing lost: nothing in it can be answered.
  }
  const uint8_t* at = c.channel_message.data() + sizeof(*frame);
  header->assign(at, at + frame->header_length);
  c.channel_data =
      absl::MakeConstSpan(at + frame->header_length, frame->data_length);
  c.from_channel = true;
  return true;
}

bool TcpDataPlane::AnswerOnSocket(Connection& c,
                                  const std::vector<uint8_t>& header,
                                  absl::Span<const uint8_t> data, int pass_fd) {
  if (c.from_channel) {
    // Told first, so a client polling the channel goes to the socket while
    // a large reply is still being sent (no doorbell: a client asleep on
    // the socket reads the reply there).
    local::ChannelSlot& slot = c.channel->reply;
    slot.length.store(local::kReplyOnSocket, std::memory_order_relaxed);
    slot.seq.store(c.channel_seq, std::memory_order_seq_cst);
  }
  return SendFramed(c.fd, header, data, pass_fd);
}

bool TcpDataPlane::Answer(Connection& c, const std::vector<uint8_t>& header,
                          absl::Span<const uint8_t> data, int pass_fd) {
  const size_t length = sizeof(tcp::TcpFrame) + header.size() + data.size();
  if (!c.from_channel || pass_fd >= 0 || length > local::kChannelMessageBytes) {
    return AnswerOnSocket(c, header, data, pass_fd);
  }
  local::ChannelSlot& slot = c.channel->reply;
  const tcp::TcpFrame frame{tcp::kFrameMagic,
                            static_cast<uint32_t>(header.size()), data.size()};
  std::memcpy(slot.bytes, &frame, sizeof(frame));
  std::memcpy(slot.bytes + sizeof(frame), header.data(), header.size());
  if (!data.empty()) {
    std::memcpy(slot.bytes + sizeof(frame) + header.size(), data.data(),
                data.size());
  }
  slot.length.store(static_cast<uint32_t>(length), std::memory_order_relaxed);
  slot.seq.store(c.channel_seq, std::memory_order_seq_cst);
  return RingClient(c);
}

bool TcpDataPlane::AnswerStatus(Connection& c, const DataRequest& req,
                                const absl::Status& status, uint32_t flags) {
  return Answer(c, ReplyHeaderBytes(req.op, req.request_id, status, flags), {});
}

// ---- The connection's thread.

bool TcpDataPlane::ServeChannelConnection(Connection& c) {
  pollfd waits[2] = {{c.fd, POLLIN, 0}, {c.handback_fd, POLLIN, 0}};
  if (poll(waits, 2, -1) < 0) return errno == EINTR;
  bool rung = false, evict = false;
  {
    absl::MutexLock lock(&c.serve_mu);
    if (c.broken) return false;
    if (waits[1].revents != 0) {
      uint64_t count = 0;
      (void)!read(c.handback_fd, &count, sizeof(count));
    }
    // By the state, not the eventfd, which may ring after poll returned:
    // the rest of a doorbell must go before anything else on the socket.
    if (c.ring_left > 0 || c.handed_back) {
      if (!DoHandedBack(c)) return false;
    }
    evict = std::exchange(c.evict_after, false);
    if (waits[0].revents != 0) {
      tcp::TcpFrame frame{};
      size_t got = 0;
      const Io r = sockio::RecvAll(c.fd, &frame, sizeof(frame), &got);
      if (r == Io::kTimedOut && got == 0) return true;  // Nothing came.
      if (r != Io::kOk) return false;
      rung = tcp::IsDoorbell(frame);
      if (!ServeSocketRequest(c, frame, c.channel_header)) return false;
    }
  }
  // A client rang: the poller slept (or is about to). It polls again.
  if (rung) WakeChannelPoller(*c.poller);
  // Not holding the connection: its next request may come meanwhile.
  if (evict) ctx_->store->EvictToWatermarks();
  // Stopping: the pollers are gone and will not serve this channel again;
  // a request posted unrung would wait for Stop's grace. The connection
  // ends after the request it served, as on the socket, unless a poller
  // handed it one more while this thread ran unlocked (it took the request
  // before Stop began: it is answered first, by the next turn).
  if (!Stopping()) return true;
  absl::MutexLock lock(&c.serve_mu);
  return c.handed_back || c.ring_left > 0;
}

bool TcpDataPlane::DoHandedBack(Connection& c) {
  if (c.ring_left > 0) {
    // The rest of a doorbell the socket could not take on the poller.
    const auto* bell = reinterpret_cast<const uint8_t*>(&kDoorbell);
    iovec rest{const_cast<uint8_t*>(bell + sizeof(kDoorbell) - c.ring_left),
               c.ring_left};
    c.ring_left = 0;
    if (sockio::SendAll(c.fd, &rest, 1) != Io::kOk) return false;
  }
  if (c.handed_back) {
    // Busy since the poller took it (ServeChannelRequest).
    c.handed_back = false;
    c.from_channel = true;  // Its data is still in channel_message.
    const bool keep = HandleRequest(c, c.handed_request, c.handed_header_status,
                                    c.handed_data_length, c.handed_start);
    EndRequest(c.fd);
    if (!keep) return false;
  }
  return true;
}

bool TcpDataPlane::HandBack(Connection& c) {
  c.handed_back = true;
  return true;
}

void TcpDataPlane::ServeChannelRequest(Connection& c, bool on_poller) {
  // A request handed back is its thread's until served.
  if (c.closed || c.broken || c.handed_back) return;
  DropReleasedLease(c);
  if (c.channel->request.seq.load(std::memory_order_acquire) == c.channel_seq) {
    return;  // Nothing new (a late doorbell, or the other server took it).
  }
  auto give_up = [&c] {
    c.broken = true;
    shutdown(c.fd, SHUT_RDWR);
  };
  // Busy before the request is taken (Stop does not end a connection mid
  // request), and until it is answered: through a hand-back too.
  if (!BeginRequest(c.fd)) return give_up();  // Stopping: not taken.
  tcp::TcpFrame frame{};
  const bool took = TakeChannelRequest(c, &frame, &c.channel_header);
  c.lease.reset();  // An in-arena GET's lease lasts until this message.
  c.lease_seq = 0;
  if (!took) {
    EndRequest(c.fd);
    return give_up();
  }
  const absl::Time start = SteadyNow();
  DataRequest req;
  const absl::Status header_status = ParseDataRequest(c.channel_header, &req);
  c.on_poller = on_poller;
  const bool keep =
      HandleRequest(c, req, header_status, frame.data_length, start);
  c.on_poller = false;
  if (!c.handed_back) EndRequest(c.fd);
  if (!keep) return give_up();  // (Never with a hand-back: HandBack keeps.)
  if (c.handed_back) {
    c.handed_request = std::move(req);
    c.handed_header_status = header_status;
    c.handed_data_length = frame.data_length;
    c.handed_start = start;
  }
}

bool TcpDataPlane::RingClient(Connection& c) {
  const local::ChannelSlot& slot = c.channel->reply;
  if (!c.on_poller) return local::RingIfAsleep(c.fd, slot) == Io::kOk;
  // One doorbell is enough for a sleeping client: none while one is owed.
  if (slot.reader_asleep.load(std::memory_order_seq_cst) == 0 ||
      c.ring_left > 0) {
    return true;
  }
  const ssize_t sent =
      send(c.fd, &kDoorbell, sizeof(kDoorbell), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (sent == static_cast<ssize_t>(sizeof(kDoorbell))) return true;
  if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    return false;  // The connection broke.
  }
  // The socket is full (a client that does not read): the connection's
  // thread sends the rest, and may block doing so.
  c.ring_left =
      sizeof(kDoorbell) - static_cast<size_t>(std::max<ssize_t>(sent, 0));
  return true;
}

// ---- The channel poller.

void TcpDataPlane::AddChannel(std::shared_ptr<Connection> c) {
  // The poller with the fewest channels (the list is fixed after Start).
  ChannelPoller* poller = nullptr;
  size_t fewest = SIZE_MAX;
  for (const std::unique_ptr<ChannelPoller>& p : pollers_) {
    absl::MutexLock lock(&p->mu);
    if (p->channels.size() < fewest) {
      fewest = p->channels.size();
      poller = p.get();
    }
  }
  c->poller = poller;
  absl::MutexLock lock(&poller->mu);
  poller->channels.push_back(std::move(c));
  ++poller->version;
  poller->wake = true;
  if (poller->thread.joinable() || poller->stop) return;
  try {
    poller->thread =
        std::thread([this, poller] { ChannelPollerLoop(*poller); });
  } catch (const std::system_error& e) {
    // Channels still work without it: their clients ring (reader_asleep
    // stays set), and the connections' threads serve.
    LogWarning("tcp_data_plane_poller_failed", {{"error", e.what()}});
  }
}

void TcpDataPlane::RemoveChannel(const Connection* c) {
  ChannelPoller& poller = *c->poller;
  absl::MutexLock lock(&poller.mu);
  auto it = std::find_if(poller.channels.begin(), poller.channels.end(),
                         [c](const auto& p) { return p.get() == c; });
  if (it == poller.channels.end()) return;
  poller.channels.erase(it);
  ++poller.version;
}

void TcpDataPlane::WakeChannelPoller(ChannelPoller& poller) {
  if (!poller.asleep.load(std::memory_order_acquire)) return;
  absl::MutexLock lock(&poller.mu);
  poller.wake = true;
}

void TcpDataPlane::StopChannelPollers() {
  for (const std::unique_ptr<ChannelPoller>& p : pollers_) {
    std::thread thread;
    {
      absl::MutexLock lock(&p->mu);
      p->stop = true;
      thread = std::move(p->thread);
    }
    if (thread.joinable()) thread.join();
  }
}

bool TcpDataPlane::PollChannelsOnce(
    const std::vector<std::shared_ptr<Connection>>& all) {
  bool served = false;
  for (const std::shared_ptr<Connection>& conn : all) {
    Connection& c = *conn;
    // Held by its thread (a socket request, a hand-back): skipped this
    // round; a request in its channel waits for the next.
    if (!c.serve_mu.TryLock()) continue;
    if (!c.closed && !c.broken) {
      if (c.marked_asleep) {
        c.channel->request.reader_asleep.store(0, std::memory_order_relaxed);
        c.marked_asleep = false;
      }
      const uint32_t before = c.channel_seq;
      ServeChannelRequest(c, /*on_poller=*/true);
      served = served || c.channel_seq != before;
      if (!c.broken && (c.handed_back || c.ring_left > 0 || c.evict_after)) {
        const uint64_t one = 1;
        (void)!write(c.handback_fd, &one, sizeof(one));
      }
    }
    c.serve_mu.Unlock();
  }
  return served;
}

bool TcpDataPlane::MarkChannelsAsleep(
    const std::vector<std::shared_ptr<Connection>>& all, bool* all_marked) {
  *all_marked = true;
  for (const std::shared_ptr<Connection>& conn : all) {
    Connection& c = *conn;
    if (!c.serve_mu.TryLock()) {
      *all_marked = false;
      continue;
    }
    bool waiting = false;
    if (!c.closed && !c.broken) {
      local::ChannelSlot& slot = c.channel->request;
      slot.reader_asleep.store(1, std::memory_order_seq_cst);
      c.marked_asleep = true;
      // A request (or release) stored before the mark is seen here; one
      // after it rings.
      waiting = slot.seq.load(std::memory_order_seq_cst) != c.channel_seq &&
                !c.handed_back;
      DropReleasedLease(c);
    }
    c.serve_mu.Unlock();
    if (waiting) return false;
  }
  return true;
}

void TcpDataPlane::ChannelPollerLoop(ChannelPoller& poller) {
  std::vector<std::shared_ptr<Connection>> all;
  uint64_t version = 0;
  bool have = false;
  absl::Time last_request = SteadyNow();
  for (;;) {
    {
      absl::MutexLock lock(&poller.mu);
      if (poller.stop) break;
      if (!have || version != poller.version) {
        all = poller.channels;
        version = poller.version;
        have = true;
      }
    }
    if (PollChannelsOnce(all)) {
      last_request = SteadyNow();
      continue;
    }
    if (SteadyNow() - last_request < options_.channel_spin) {
      sched_yield();
      continue;
    }
    // Idle for channel_spin: to sleep. Clients ring from here on.
    poller.asleep.store(true, std::memory_order_seq_cst);
    bool all_marked = true;
    if (!MarkChannelsAsleep(all, &all_marked)) {
      poller.asleep.store(false, std::memory_order_release);
      last_request = SteadyNow();
      continue;
    }
    bool woken = false;
    {
      absl::MutexLock lock(&poller.mu);
      auto wake = [&poller]() ABSL_SHARED_LOCKS_REQUIRED(poller.mu) {
        return poller.wake || poller.stop;
      };
      if (all_marked) {
        poller.mu.Await(absl::Condition(&wake));
        woken = true;
      } else {
        // A channel stayed unmarked (its thread held it): its client does
        // not ring, so look again soon.
        woken = poller.mu.AwaitWithTimeout(absl::Condition(&wake), kNapTime);
      }
      poller.wake = false;
    }
    poller.asleep.store(false, std::memory_order_release);
    // Woken by a request: poll for the next ones for channel_spin. After a
    // nap, try to sleep again at once.
    if (woken) last_request = SteadyNow();
  }
  poller.asleep.store(true, std::memory_order_release);
}

}  // namespace strata::cluster
