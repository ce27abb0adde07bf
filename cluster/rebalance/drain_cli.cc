#include "cluster/rebalance/drain_cli.h"

#include <chrono>
#include <cstdio>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "strata/v1/admin.grpc.pb.h"

namespace strata::cluster {
namespace {

grpc::Status CallDrain(strata::v1::AdminService::Stub* stub,
                       absl::Duration deadline,
                       strata::v1::DrainResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   absl::ToChronoMilliseconds(deadline));
  return stub->Drain(&ctx, strata::v1::DrainRequest(), resp);
}

std::string Progress(const strata::v1::DrainResponse& r) {
  std::string line = absl::StrCat(r.state(), ": ", r.blocks_moved(),
                                  " blocks (", r.bytes_moved(), " bytes) moved, ",
                                  r.blocks_left(), " blocks (", r.bytes_left(),
                                  " bytes) left");
  if (!r.message().empty()) absl::StrAppend(&line, " (", r.message(), ")");
  return line;
}

}  // namespace

int RunDrainCommand(const DrainCliOptions& options) {
  auto channel = grpc::CreateChannel(options.address,
                                     grpc::InsecureChannelCredentials());
  auto stub = strata::v1::AdminService::NewStub(channel);
  strata::v1::DrainResponse resp;
  grpc::Status s = CallDrain(stub.get(), options.call_deadline, &resp);
  if (!s.ok()) {
    std::fprintf(stderr, "stratactl: drain %s: %s\n", options.address.c_str(),
                 s.error_message().c_str());
    return 1;
  }
  if (resp.state().empty()) {
    std::printf("draining: new blocks are refused; reads continue\n");
    return 0;
  }
  std::printf("draining %s: moving its blocks to their new owners\n",
              options.address.c_str());
  std::string last = Progress(resp);
  std::printf("%s\n", last.c_str());
  std::fflush(stdout);
  if (!options.wait) return 0;
  const absl::Time deadline = absl::Now() + options.timeout;
  while (resp.state() != "done") {
    if (absl::Now() >= deadline) {
      std::fprintf(stderr, "stratactl: drain %s: not done after %s\n",
                   options.address.c_str(),
                   absl::FormatDuration(options.timeout).c_str());
      return 1;
    }
    // A CLI waiting on a remote process: it polls at a human pace.
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(options.poll));
    strata::v1::DrainResponse next;
    s = CallDrain(stub.get(), options.call_deadline, &next);
    if (!s.ok()) {
      std::fprintf(stderr, "stratactl: drain %s: %s (last: %s)\n",
                   options.address.c_str(), s.error_message().c_str(),
                   last.c_str());
      return 1;
    }
    resp = next;
    const std::string line = Progress(resp);
    if (line != last) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
      last = line;
    }
  }
  std::printf("drained: %llu blocks moved, %llu left; the node left the "
              "cluster and exits\n",
              static_cast<unsigned long long>(resp.blocks_moved()),
              static_cast<unsigned long long>(resp.blocks_left()));
  return 0;
}

}  // namespace strata::cluster
