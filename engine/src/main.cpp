// dgdo-engine: parse the CLI, run the loop, clean up the control socket on exit.
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "loop/cli.hpp"
#include "loop/event_loop.hpp"
#include "loop/journal_log.hpp"
#include "replay/replay.hpp"

namespace {

// Asks the kernel for SIGTERM when our parent dies (the loop treats it as any SIGTERM: a clean
// exit), so a supervisor killed with -9 leaves no engine behind. The request only counts from
// now on: a parent that died before it (we were reparented already) is caught by comparing
// getppid() with the pid the parent gave us. False when the parent is gone.
bool die_with_parent(pid_t parent) {
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) {
        std::fprintf(stderr, "dgdo-engine: ! prctl(PR_SET_PDEATHSIG): %s\n", std::strerror(errno));
        return false;
    }
    return getppid() == parent;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "replay") == 0) return dgdo::replay_main(argc - 1, argv + 1);
    if (argc == 2 && std::strcmp(argv[1], "--version") == 0) {
        std::printf("dgdo-engine %s\n", DGDO_VERSION);
        return 0;
    }
    dgdo::prefix_stderr_for_journal();  // under systemd: each stderr line carries its priority (loop/journal_log.hpp)
    int code = 0;
    const auto opt = dgdo::parse_cli(argc, argv, &code);
    if (!opt) return code;
    if (opt->die_with_parent && !die_with_parent(opt->die_with_parent)) {
        std::fprintf(stderr, "dgdo-engine: ! parent %d is gone (--die-with-parent); not starting\n",
                     static_cast<int>(opt->die_with_parent));
        return 1;
    }

    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    const uint64_t epoch = static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);

    dgdo::Options run = *opt;
    run.persist.boot_id = dgdo::current_boot_id();
    dgdo::EventLoop loop(run, epoch);
    if (const int rc = loop.init(); rc != 0) {
        if (rc == -EADDRINUSE)
            std::fprintf(stderr,
                         "dgdo-engine: ! another engine is live on %s (it accepts connections); refusing to start. "
                         "Stop it first, or give this one its own --control.\n",
                         opt->control.c_str());
        else if (!loop.state_refused())  // (its own line, the last one systemctl status shows, says what to do)
            std::fprintf(stderr, "dgdo-engine: ! cannot start on %s: %s\n", opt->control.c_str(), std::strerror(-rc));
        return 1;
    }
    std::printf("dgdo-engine ready control=%s pid=%d epoch=%llu\n", opt->control.c_str(), static_cast<int>(getpid()),
                static_cast<unsigned long long>(epoch));
    std::fflush(stdout);
    return loop.run();
}
