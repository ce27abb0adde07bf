/* A native backtrace on SIGSEGV/SIGBUS/SIGABRT for machines without gdb:
 *   gcc -shared -fPIC -O1 -o /tmp/segv_backtrace.so tools/gpu/segv_backtrace.c
 *   LD_PRELOAD=/tmp/segv_backtrace.so UCX_HANDLE_ERRORS=none python3 ...
 * (Python's faulthandler and UCX's handler must stay off: they replace this
 * one.) Prints the faulting address, the program counter, the frames
 * (symbolize the offsets with addr2line) and, because a call through a null
 * pointer leaves nothing to unwind, the code addresses found in the top 32
 * stack words; then re-raises with the default action. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdint.h>
#include <ucontext.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_fault(int sig, siginfo_t* info, void* ctx) {
  char line[128];
  int n = snprintf(line, sizeof line, "\n*** signal %d (%s), address %p, thread %ld\n",
                   sig, strsignal(sig), info->si_addr, (long)gettid());
  if (write(2, line, n) < 0) return;
  const ucontext_t* uc = (const ucontext_t*)ctx;
  const uintptr_t pc = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
  const uintptr_t* sp = (const uintptr_t*)uc->uc_mcontext.gregs[REG_RSP];
  n = snprintf(line, sizeof line, "pc %p, sp %p\n", (void*)pc, (void*)sp);
  if (write(2, line, n) < 0) return;
  void* frames[64];
  int depth = backtrace(frames, 64);
  backtrace_symbols_fd(frames, depth, 2);
  if (write(2, "stack words that point into code:\n", 34) < 0) return;
  for (int i = 0; i < 32; ++i) {
    Dl_info di;
    void* v = (void*)sp[i];
    if (v != NULL && dladdr(v, &di) && di.dli_fname != NULL) {
      n = snprintf(line, sizeof line, "  [sp+%d] %s+%#lx (%s)\n", 8 * i, di.dli_fname,
                   (unsigned long)((uintptr_t)v - (uintptr_t)di.dli_fbase),
                   di.dli_sname ? di.dli_sname : "?");
      if (write(2, line, n) < 0) return;
    }
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  static char stack[1 << 16];
  stack_t ss = {.ss_sp = stack, .ss_size = sizeof stack, .ss_flags = 0};
  sigaltstack(&ss, NULL);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, NULL);
  sigaction(SIGBUS, &sa, NULL);
  void* warm[1];
  backtrace(warm, 1); /* Loads libgcc_s now, not inside the handler. */
}
