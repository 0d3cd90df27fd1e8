// dgdo-ringpeer: one side of a cross-process ring check, driven by tests.
//
//   produce --ring-fd FD --count N --max-payload B --wake-fd FD [--burst K --gap-us G]
//           [--await-drain-ms D]
//   consume --ring-fd FD --count N --max-payload B --wake-fd FD [--timeout-s T]
//
// The test creates and formats the segment (a memfd, as the engine's are) and the eventfd,
// and passes both fds to this process (inherited). Record `seq` is
// type 7 with body {u64 seq, payload[(seq * 7919) % (B + 1)]}, payload byte i
// = (seq + i) & 0xff. consume exits 0 when all N match, 1 on a mismatch,
// 3 when nothing arrives for T seconds. With --await-drain-ms, produce waits
// after each burst (and its doorbell) until the consumer has released all of
// it, and exits 4 when that takes longer than D ms: a lost wake-up then fails
// at once instead of being rescued by the next burst's doorbell.
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dgdo/ring.h"

namespace {

constexpr int32_t kType = 7;

struct Args {
    std::string mode;
    int ring_fd = -1;
    uint64_t count = 0, max_payload = 0, burst = 0, gap_us = 0, await_drain_ms = 0;
    int wake_fd = -1;
    double timeout_s = 60;
};

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr, "dgdo-ringpeer: %s\nusage: dgdo-ringpeer produce|consume --ring-fd FD --count N "
                         "--max-payload B --wake-fd FD [--burst K --gap-us G --await-drain-ms D] [--timeout-s T]\n", msg);
    std::exit(2);
}

uint64_t number(const char* s) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(s, &end, 10);
    if (errno || end == s || *end) usage("bad number");
    return v;
}

Args parse(int argc, char** argv) {
    if (argc < 2) usage("missing mode");
    Args a;
    a.mode = argv[1];
    if (a.mode != "produce" && a.mode != "consume") usage("mode must be produce or consume");
    for (int i = 2; i < argc; i += 2) {
        const std::string f = argv[i];
        if (i + 1 >= argc) usage("flag without value");
        const char* v = argv[i + 1];
        if (f == "--ring-fd") a.ring_fd = static_cast<int>(number(v));
        else if (f == "--count") a.count = number(v);
        else if (f == "--max-payload") a.max_payload = number(v);
        else if (f == "--wake-fd") a.wake_fd = static_cast<int>(number(v));
        else if (f == "--burst") a.burst = number(v);
        else if (f == "--gap-us") a.gap_us = number(v);
        else if (f == "--await-drain-ms") a.await_drain_ms = number(v);
        else if (f == "--timeout-s") a.timeout_s = std::strtod(v, nullptr);
        else usage(("unknown flag " + f).c_str());
    }
    if (a.ring_fd < 0 || a.wake_fd < 0) usage("--ring-fd and --wake-fd are required");
    return a;
}

void* map_segment(int fd, size_t* size) {
    struct stat st {};
    if (fstat(fd, &st) != 0) { std::perror("fstat"); std::exit(1); }
    void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) { std::perror("mmap"); std::exit(1); }
    const int rc = dgdo_ring_check(p, static_cast<size_t>(st.st_size), 0);
    if (rc != DGDO_RING_OK) { std::fprintf(stderr, "ring check failed: %d\n", rc); std::exit(1); }
    *size = static_cast<size_t>(st.st_size);
    return p;
}

size_t payload_len(uint64_t seq, uint64_t max_payload) { return static_cast<size_t>((seq * 7919) % (max_payload + 1)); }

void ring_doorbell(int fd) {
    const uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0 && errno != EAGAIN) std::perror("write doorbell");
}

int produce(const Args& a) {
    size_t size = 0;
    void* seg = map_segment(a.ring_fd, &size);
    dgdo_ring_producer p;
    dgdo_ring_producer_init(&p, seg, static_cast<int32_t>(getpid()));
    std::vector<uint8_t> body(8 + a.max_payload);
    std::mt19937_64 rng(12345);
    for (uint64_t seq = 0; seq < a.count; ++seq) {
        const size_t n = payload_len(seq, a.max_payload);
        std::memcpy(body.data(), &seq, 8);
        for (size_t i = 0; i < n; ++i) body[8 + i] = static_cast<uint8_t>((seq + i) & 0xff);
        int rc;
        while ((rc = dgdo_ring_write(&p, kType, body.data(), static_cast<uint32_t>(8 + n))) == DGDO_RING_FULL) {
            if (dgdo_ring_producer_should_wake(&p)) ring_doorbell(a.wake_fd);  // never leave a parked reader behind a full ring
            sched_yield();
        }
        if (rc != DGDO_RING_OK) { std::fprintf(stderr, "write seq %llu failed: %d\n", (unsigned long long)seq, rc); return 1; }
        const bool end_of_burst = a.burst == 0 || (seq + 1) % a.burst == 0 || seq + 1 == a.count;
        if (!end_of_burst) continue;
        if (dgdo_ring_producer_should_wake(&p)) ring_doorbell(a.wake_fd);
        if (a.await_drain_ms) {
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(a.await_drain_ms);
            while (DGDO_LOAD(&p.hdr->head, acquire) != p.tail) {  // pairs with the consumer's head release
                if (std::chrono::steady_clock::now() > deadline) {
                    std::fprintf(stderr, "stall: burst ending at seq %llu not drained within %llu ms "
                                 "(head %llu tail %llu parked %u): a lost wake-up\n",
                                 (unsigned long long)seq, (unsigned long long)a.await_drain_ms,
                                 (unsigned long long)DGDO_LOAD(&p.hdr->head, acquire), (unsigned long long)p.tail,
                                 DGDO_LOAD(&p.hdr->parked, relaxed));
                    return 4;
                }
                sched_yield();
            }
        }
        if (a.burst && a.gap_us) {
            const uint64_t sleep_us = a.gap_us + rng() % (a.gap_us + 1);
            std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
        }
    }
    std::printf("produced %llu\n", static_cast<unsigned long long>(a.count));
    munmap(seg, size);
    return 0;
}

struct Check {
    uint64_t expected = 0, max_payload = 0;
    bool failed = false;
};

void check_record(void* ctx, int32_t type, const uint8_t* body, uint32_t len) {
    auto* c = static_cast<Check*>(ctx);
    if (c->failed) return;
    uint64_t seq = ~0ull;
    if (len >= 8) std::memcpy(&seq, body, 8);
    const size_t n = payload_len(c->expected, c->max_payload);
    if (type != kType || len != 8 + n || seq != c->expected) {
        std::fprintf(stderr, "mismatch at %llu: type %d len %u seq %llu (want type 7 len %zu)\n",
                     (unsigned long long)c->expected, type, len, (unsigned long long)seq, 8 + n);
        c->failed = true;
        return;
    }
    for (size_t i = 0; i < n; ++i) {
        if (body[8 + i] != static_cast<uint8_t>((seq + i) & 0xff)) {
            std::fprintf(stderr, "mismatch at %llu: payload byte %zu = %u\n", (unsigned long long)seq, i, body[8 + i]);
            c->failed = true;
            return;
        }
    }
    ++c->expected;
}

int consume(const Args& a) {
    size_t size = 0;
    void* seg = map_segment(a.ring_fd, &size);
    dgdo_ring_consumer c;
    dgdo_ring_consumer_init(&c, seg, static_cast<int32_t>(getpid()));
    Check chk{0, a.max_payload, false};
    uint64_t wakeups = 0;
    const int timeout_ms = static_cast<int>(a.timeout_s * 1000);
    while (chk.expected < a.count) {
        if (dgdo_ring_read(&c, check_record, &chk, 256) > 0) {
            if (chk.failed) return 1;
            continue;
        }
        bool got = false;
        for (int spin = 0; spin < 2000 && !got; ++spin) got = dgdo_ring_pending(&c);
        if (got) continue;
        if (!dgdo_ring_park(&c)) continue;
        pollfd pfd{a.wake_fd, POLLIN, 0};
        const int rc = poll(&pfd, 1, timeout_ms);
        dgdo_ring_unpark(&c);
        if (rc == 0) {
            std::fprintf(stderr, "stalled at %llu of %llu\n", (unsigned long long)chk.expected, (unsigned long long)a.count);
            return 3;
        }
        if (rc < 0) { if (errno == EINTR) continue; std::perror("poll"); return 1; }
        uint64_t v;
        if (read(a.wake_fd, &v, sizeof v) < 0 && errno != EAGAIN) { std::perror("read doorbell"); return 1; }
        ++wakeups;
    }
    std::printf("consumed %llu wakeups %llu\n", (unsigned long long)a.count, (unsigned long long)wakeups);
    munmap(seg, size);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const Args a = parse(argc, argv);
    return a.mode == "produce" ? produce(a) : consume(a);
}
