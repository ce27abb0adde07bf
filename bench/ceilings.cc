// bench/ceilings: the raw limits the service benchmark compares against,
// measured in the same run: a plain TCP byte stream over loopback (1 and N
// concurrent connections, 1 MiB writes) and single-thread memcpy.
// The stream ceilings are also measured with the receiver hashing what it
// reads (XXH3-64, as a verified receive must): the least a transfer whose
// checksum is checked where it lands costs on this machine.
//
//   ceilings [--streams=4] [--bytes_per_stream=2GiB]
//   ceilings --request_bytes=S [--clients=C] [--total_bytes=256MiB]
// Prints one line per measurement: "<name> <GB/s>" (GB = 1e9 bytes).
//
// The second form is the closed-loop ceiling: C connections, each sending
// an S-byte request and waiting for a 16-byte answer before the next, as
// the service benchmark's clients (and redis-benchmark's) do; plain sockets,
// no copy or hash beyond the kernel's. It prints
// "loopback_tcp_request_reply_<S>x<C> <GB/s>".
//
//   ceilings --store_stream=put|get --request_bytes=S [--clients=C]
//            [--total_bytes=256MiB]
// is the stream ceiling at a value's size, with memory where a store has
// it: C plain streams of S-byte values, no answers, where one end of each
// stream works in 256 MiB / C of memory (far beyond the caches) taken S
// bytes at a time in turn, as the daemon's arena is, and the other in one
// S-byte buffer, as a client's block is (put: received into the large
// memory; get: sent from it). It prints
// "loopback_tcp_store_stream_<put|get>_<S>x<C> <GB/s>".
//
//   ceilings --cpu_probe
// prints "cross_cpu_round_trip_ns <ns>": a cache line passed back and forth
// between threads pinned to the process's first two CPUs. It tells the
// machine's phase: on the dev VM 55-90 ns while its two vCPUs share
// caches, 250-500 ns while they sit on different dies, when every
// transfer between two processes (loopback TCP, shared memory) is slower
// (bench/results/kvstore.md, session 13).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack.
#include "xxh_x86dispatch.h"     // The same SIMD dispatch as the store.
#include "xxhash.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// A listening socket on a free loopback port (its address in *addr); exits
// on failure.
int ListenLoopback(int backlog, sockaddr_in* addr) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  *addr = sockaddr_in{};
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(listener, reinterpret_cast<sockaddr*>(addr), sizeof(*addr)) != 0 ||
      listen(listener, backlog) != 0) {
    std::perror("bind/listen");
    std::exit(1);
  }
  socklen_t len = sizeof(*addr);
  getsockname(listener, reinterpret_cast<sockaddr*>(addr), &len);
  return listener;
}

// A connection to `addr` with TCP_NODELAY; exits on failure.
int ConnectLoopback(const sockaddr_in& addr) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("connect");
    std::exit(1);
  }
  return fd;
}

bool ReadFull(int fd, char* p, size_t n) {
  while (n > 0) {
    const ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteFull(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t r = write(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Runs `pairs` loopback connections at once: serve(fd, i) on the accepted
// end of connection i and drive(fd, i) on its connecting end, each on a
// thread of its own (the function closes neither fd). Returns the seconds
// from the start of the first thread to the end of the last.
template <typename Serve, typename Drive>
double TimeLoopbackPairs(int pairs, Serve serve, Drive drive) {
  sockaddr_in addr{};
  const int listener = ListenLoopback(pairs, &addr);
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  for (int i = 0; i < pairs; ++i) {
    threads.emplace_back([&, i] {
      const int fd = accept(listener, nullptr, nullptr);
      if (fd < 0) {
        std::perror("accept");
        std::exit(1);  // The driving end would wait for it forever.
      }
      serve(fd, i);
      close(fd);
    });
    threads.emplace_back([&, i] {
      const int fd = ConnectLoopback(addr);
      drive(fd, i);
      close(fd);
    });
  }
  for (auto& t : threads) t.join();
  const double secs = Seconds(start, Clock::now());
  close(listener);
  return secs;
}

// One sender and one receiver per stream, all concurrently; with `hash`,
// each receiver hashes every piece it read.
double LoopbackStreamsGBps(int streams, uint64_t bytes_per_stream,
                           bool hash = false) {
  constexpr size_t kChunk = 1 << 20;
  const double secs = TimeLoopbackPairs(
      streams,
      [&](int fd, int) {
        std::vector<char> buf(kChunk);
        uint64_t got = 0;
        XXH3_state_t state;
        XXH3_64bits_reset(&state);
        while (got < bytes_per_stream) {
          ssize_t n = read(fd, buf.data(), buf.size());
          if (n <= 0) break;
          if (hash) XXH3_64bits_update(&state, buf.data(), n);
          got += n;
        }
        const uint64_t digest = XXH3_64bits_digest(&state);
        asm volatile("" : : "r"(digest) : "memory");
      },
      [&](int fd, int) {
        std::vector<char> buf(kChunk, 'x');
        uint64_t sent = 0;
        while (sent < bytes_per_stream) {
          ssize_t n = write(fd, buf.data(), buf.size());
          if (n <= 0) break;
          sent += n;
        }
      });
  return static_cast<double>(bytes_per_stream) * streams / secs / 1e9;
}

// C client threads, each with its server thread: `requests` rounds of an
// S-byte request and a 16-byte answer.
double RequestReplyGBps(int clients, size_t request_bytes, uint64_t requests) {
  const double secs = TimeLoopbackPairs(
      clients,
      [&](int fd, int) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        std::vector<char> buf(request_bytes);
        char answer[16] = {};
        for (uint64_t i = 0; i < requests; ++i) {
          if (!ReadFull(fd, buf.data(), buf.size()) ||
              !WriteFull(fd, answer, sizeof(answer))) {
            break;
          }
        }
      },
      [&](int fd, int) {
        std::vector<char> buf(request_bytes, 'x');
        char answer[16];
        for (uint64_t i = 0; i < requests; ++i) {
          if (!WriteFull(fd, buf.data(), buf.size()) ||
              !ReadFull(fd, answer, sizeof(answer))) {
            break;
          }
        }
      });
  return static_cast<double>(request_bytes) * requests * clients / secs / 1e9;
}

double MemcpyGBps(size_t size, int reps) {
  std::vector<char> src(size, 'a'), dst(size, 'b');
  std::memcpy(dst.data(), src.data(), size);  // Fault in both.
  const auto start = Clock::now();
  for (int i = 0; i < reps; ++i) {
    std::memcpy(dst.data(), src.data(), size);
    asm volatile("" : : "r"(dst.data()) : "memory");
  }
  return static_cast<double>(size) * reps / Seconds(start, Clock::now()) / 1e9;
}

// C streams of `values` S-byte values each, with the large-memory end
// receiving (`into_store`, a put) or sending (a get); see the file comment.
double StoreStreamsGBps(int streams, size_t value_bytes, uint64_t values,
                        bool into_store) {
  const size_t region_bytes = std::max<size_t>(
      value_bytes, ((size_t{256} << 20) / streams) / value_bytes * value_bytes);
  // Every end's memory is touched first (the arena is populated at start).
  std::vector<std::vector<char>> regions(streams), buffers(streams);
  for (int s = 0; s < streams; ++s) {
    regions[s].assign(region_bytes, 'r');
    buffers[s].assign(value_bytes, 'b');
  }
  auto slot = [&](int s, uint64_t i) {
    const size_t slots = region_bytes / value_bytes;
    return regions[s].data() + (i % slots) * value_bytes;
  };
  const double secs = TimeLoopbackPairs(
      streams,
      [&](int fd, int s) {
        for (uint64_t i = 0; i < values; ++i) {
          char* dst = into_store ? slot(s, i) : buffers[s].data();
          if (!ReadFull(fd, dst, value_bytes)) break;
        }
      },
      [&](int fd, int s) {
        for (uint64_t i = 0; i < values; ++i) {
          const char* src = into_store ? buffers[s].data() : slot(s, i);
          if (!WriteFull(fd, src, value_bytes)) break;
        }
      });
  return static_cast<double>(value_bytes) * values * streams / secs / 1e9;
}

// The round trip of one cache line between threads pinned to the first two
// CPUs the process may use, in ns; negative when it has only one.
double CrossCpuRoundTripNs() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return -1;
  int cpus[2];
  int found = 0;
  for (int c = 0; c < CPU_SETSIZE && found < 2; ++c) {
    if (CPU_ISSET(c, &allowed)) cpus[found++] = c;
  }
  if (found < 2) return -1;
  auto pin = [](int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0;
  };
  // The first kWarmup rounds (the echo thread starting, both moving to
  // their CPUs) are not timed.
  constexpr int kWarmup = 1000;
  constexpr int kRounds = 20000;
  alignas(64) std::atomic<int> line{0};
  std::atomic<bool> pinned{true};
  std::thread echo([&] {
    if (!pin(cpus[1])) pinned = false;
    for (int i = 0; i < kWarmup + kRounds; ++i) {
      while (line.load(std::memory_order_acquire) != 2 * i + 1) {
      }
      line.store(2 * i + 2, std::memory_order_release);
    }
  });
  if (!pin(cpus[0])) pinned = false;
  auto start = Clock::now();
  for (int i = 0; i < kWarmup + kRounds; ++i) {
    if (i == kWarmup) start = Clock::now();
    line.store(2 * i + 1, std::memory_order_release);
    while (line.load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  const double secs = Seconds(start, Clock::now());
  echo.join();
  if (!pinned) return -1;  // Not between two CPUs: no reading.
  return secs * 1e9 / kRounds;
}

}  // namespace

int main(int argc, char** argv) {
  int streams = 4;
  uint64_t bytes = uint64_t{2} << 30;
  uint64_t request_bytes = 0;
  int clients = 1;
  uint64_t total_bytes = uint64_t{256} << 20;
  std::string store_stream;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--streams=", 0) == 0) streams = std::atoi(a.c_str() + 10);
    if (a.rfind("--bytes_per_stream=", 0) == 0) {
      bytes = std::strtoull(a.c_str() + 19, nullptr, 10);
    }
    if (a.rfind("--request_bytes=", 0) == 0) {
      request_bytes = std::strtoull(a.c_str() + 16, nullptr, 10);
    }
    if (a.rfind("--clients=", 0) == 0) clients = std::atoi(a.c_str() + 10);
    if (a.rfind("--total_bytes=", 0) == 0) {
      total_bytes = std::strtoull(a.c_str() + 14, nullptr, 10);
    }
    if (a.rfind("--store_stream=", 0) == 0) store_stream = a.substr(15);
    if (a == "--cpu_probe") {
      std::printf("cross_cpu_round_trip_ns %.0f\n", CrossCpuRoundTripNs());
      return 0;
    }
  }
  if (!store_stream.empty()) {
    if ((store_stream != "put" && store_stream != "get") ||
        request_bytes == 0) {
      std::fprintf(stderr,
                   "--store_stream=put|get needs --request_bytes=S > 0\n");
      return 2;
    }
    clients = std::max(clients, 1);
    const uint64_t values = std::max<uint64_t>(
        8, total_bytes / request_bytes / static_cast<uint64_t>(clients));
    std::printf("loopback_tcp_store_stream_%s_%llux%d %.2f\n",
                store_stream.c_str(),
                static_cast<unsigned long long>(request_bytes), clients,
                StoreStreamsGBps(clients, request_bytes, values,
                                 store_stream == "put"));
    return 0;
  }
  if (request_bytes > 0) {
    clients = std::max(clients, 1);
    const uint64_t requests = std::max<uint64_t>(
        8, total_bytes / request_bytes / static_cast<uint64_t>(clients));
    std::printf("loopback_tcp_request_reply_%llux%d %.2f\n",
                static_cast<unsigned long long>(request_bytes), clients,
                RequestReplyGBps(clients, request_bytes, requests));
    return 0;
  }
  std::printf("loopback_tcp_1_stream %.2f\n", LoopbackStreamsGBps(1, bytes));
  std::printf("loopback_tcp_%d_streams %.2f\n", streams,
              LoopbackStreamsGBps(streams, bytes / streams));
  std::printf("loopback_tcp_1_stream_hashed %.2f\n",
              LoopbackStreamsGBps(1, bytes, /*hash=*/true));
  std::printf("loopback_tcp_%d_streams_hashed %.2f\n", streams,
              LoopbackStreamsGBps(streams, bytes / streams, /*hash=*/true));
  std::printf("memcpy_1MiB %.2f\n", MemcpyGBps(1 << 20, 4000));
  std::printf("memcpy_32MiB %.2f\n", MemcpyGBps(32 << 20, 60));
  return 0;
}
