// dgdo-engine: parse the CLI, run the loop, clean up shm and the socket on exit.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "loop/cli.hpp"
#include "loop/event_loop.hpp"
#include "replay/replay.hpp"

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "replay") == 0) return dgdo::replay_main(argc - 1, argv + 1);
    int code = 0;
    const auto opt = dgdo::parse_cli(argc, argv, &code);
    if (!opt) return code;

    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    const uint64_t epoch = static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);

    dgdo::EventLoop loop(*opt, epoch);
    if (const int rc = loop.init(); rc != 0) {
        if (rc == -EADDRINUSE)
            std::fprintf(stderr,
                         "dgdo-engine: ! another engine is live on %s (it accepts connections); refusing to start. "
                         "Stop it first, or give this one its own --control and --instance.\n",
                         opt->control.c_str());
        else if (rc == -EBUSY)
            std::fprintf(stderr,
                         "dgdo-engine: ! instance \"%s\" has ring segments of a live engine; refusing to start. "
                         "Stop it first, or give this one its own --instance.\n",
                         opt->instance.c_str());
        else
            std::fprintf(stderr, "dgdo-engine: ! cannot start on %s: %s\n", opt->control.c_str(), std::strerror(-rc));
        return 1;
    }
    std::printf("dgdo-engine ready control=%s pid=%d epoch=%llu\n", opt->control.c_str(), static_cast<int>(getpid()),
                static_cast<unsigned long long>(epoch));
    std::fflush(stdout);
    return loop.run();
}
