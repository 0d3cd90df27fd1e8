// ring_bench: C++ -> C++ over a real shared-memory ring (include/dgdo/ring.h, in a memfd), two processes.
//
//   ring_bench [--quick | --smoke]
//
// 1. throughput: the producer writes N records as fast as it can (retrying on FULL), the
//    consumer drains with dgdo_ring_read() in a busy loop; records/s for 64 B and 168 B bodies
//    (168 B = dgdo_out_new_order).
// 2. one-way latency, consumer spinning: the producer stamps CLOCK_MONOTONIC into the body
//    and commits one record every ~20 us; the consumer, busy-polling, takes now - stamp.
// 3. one-way latency, consumer parked: the consumer parks (dgdo_ring_park) and blocks in
//    read() on an eventfd doorbell; the producer commits one record every 50 us, 200 us or
//    1 ms (the idle rate of the latency suite) and rings
//    the doorbell when dgdo_ring_producer_should_wake() says so. This is the engine -> sidecar
//    wake-up path, without Python.
// Prints a Markdown table and one JSON line. Machine noise: run it on a quiet box.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dgdo/ring.h"

namespace {

constexpr uint64_t kCapacity = 1u << 22;

uint64_t now_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// The ring in a memfd, as the engine makes it: the forked child inherits the mapping, and no
// signal that ends either process can leave a segment behind (no name in /dev/shm to unlink).
struct Shm {
    void* base = nullptr;
    size_t size = 0;
    Shm() {
        size = dgdo_ring_segment_size(kCapacity);
        const int fd = memfd_create("dgdo.ringbench", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) {
            std::perror("memfd");
            std::exit(1);
        }
        base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (base == MAP_FAILED) {
            std::perror("mmap");
            std::exit(1);
        }
        dgdo_ring_format(base, kCapacity, 1);
    }
    ~Shm() { munmap(base, size); }
};

// Results travel from the consumer child to the parent through a pipe.
struct Pipe {
    int fd[2];
    Pipe() {
        if (pipe(fd) != 0) std::exit(1);
    }
};

void write_all(int fd, const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n) {
        const ssize_t k = write(fd, c, n);
        if (k <= 0) std::exit(1);
        c += k;
        n -= static_cast<size_t>(k);
    }
}

void read_all(int fd, void* p, size_t n) {
    char* c = static_cast<char*>(p);
    while (n) {
        const ssize_t k = read(fd, c, n);
        if (k <= 0) std::exit(1);
        c += k;
        n -= static_cast<size_t>(k);
    }
}

struct CountCtx {
    uint64_t n = 0;
    uint64_t sum = 0;
};

void count_handler(void* ctx, int32_t, const uint8_t* body, uint32_t) {
    auto* c = static_cast<CountCtx*>(ctx);
    uint64_t seq;
    std::memcpy(&seq, body, 8);
    c->sum += seq;
    ++c->n;
}

struct LatCtx {
    std::vector<uint64_t>* out;
};

void lat_handler(void* ctx, int32_t, const uint8_t* body, uint32_t) {
    const uint64_t t = now_ns();
    uint64_t stamp;
    std::memcpy(&stamp, body, 8);
    static_cast<LatCtx*>(ctx)->out->push_back(t - stamp);
}

double throughput(uint64_t count, uint32_t body_len) {
    Shm shm;
    Pipe p;
    const pid_t child = fork();
    if (child == 0) {  // consumer
        dgdo_ring_consumer c;
        dgdo_ring_consumer_init(&c, shm.base, getpid());
        CountCtx ctx;
        while (ctx.n < count) dgdo_ring_read(&c, count_handler, &ctx, 4096);
        const bool ok = ctx.sum == count * (count - 1) / 2;
        write_all(p.fd[1], &ok, sizeof ok);
        _exit(0);
    }
    dgdo_ring_producer prod;
    dgdo_ring_producer_init(&prod, shm.base, getpid());
    std::vector<uint8_t> body(body_len, 0x5a);
    const uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < count; ++i) {
        std::memcpy(body.data(), &i, 8);
        while (dgdo_ring_write(&prod, 1, body.data(), body_len) == DGDO_RING_FULL) {
        }
    }
    bool ok = false;
    read_all(p.fd[0], &ok, sizeof ok);
    const uint64_t t1 = now_ns();
    waitpid(child, nullptr, 0);
    if (!ok) {
        std::fprintf(stderr, "ring_bench: checksum mismatch\n");
        std::exit(1);
    }
    return static_cast<double>(count) / (static_cast<double>(t1 - t0) / 1e9);
}

// Paced one-way latency; parked = consumer sleeps on an eventfd between records.
std::vector<uint64_t> latency(uint64_t count, uint64_t gap_ns, bool parked) {
    Shm shm;
    Pipe p;
    const int bell = eventfd(0, 0);
    const pid_t child = fork();
    if (child == 0) {
        dgdo_ring_consumer c;
        dgdo_ring_consumer_init(&c, shm.base, getpid());
        std::vector<uint64_t> lat;
        lat.reserve(count);
        LatCtx ctx{&lat};
        while (lat.size() < count) {
            if (dgdo_ring_read(&c, lat_handler, &ctx, 4096)) continue;
            if (parked && dgdo_ring_park(&c)) {
                uint64_t v;
                if (read(bell, &v, sizeof v) < 0 && errno != EINTR) _exit(1);
                dgdo_ring_unpark(&c);
            }
        }
        write_all(p.fd[1], lat.data(), count * sizeof(uint64_t));
        _exit(0);
    }
    dgdo_ring_producer prod;
    dgdo_ring_producer_init(&prod, shm.base, getpid());
    uint8_t body[160] = {};
    uint64_t wakes = 0;
    for (uint64_t i = 0; i < count; ++i) {
        const uint64_t due = now_ns() + gap_ns;
        if (parked) {
            timespec ts{0, static_cast<long>(gap_ns)};
            nanosleep(&ts, nullptr);
        } else {
            while (now_ns() < due) {
            }
        }
        const uint64_t stamp = now_ns();
        std::memcpy(body, &stamp, 8);
        while (dgdo_ring_write(&prod, 1, body, sizeof body) == DGDO_RING_FULL) {
        }
        if (dgdo_ring_producer_should_wake(&prod)) {
            const uint64_t one = 1;
            ++wakes;
            if (write(bell, &one, sizeof one) < 0) std::exit(1);
        }
    }
    std::vector<uint64_t> lat(count);
    read_all(p.fd[0], lat.data(), count * sizeof(uint64_t));
    waitpid(child, nullptr, 0);
    close(bell);
    if (parked) std::fprintf(stderr, "  (%llu doorbells for %llu records)\n", (unsigned long long)wakes,
                             (unsigned long long)count);
    return lat;
}

double pct(std::vector<uint64_t>& v, double p) {
    const size_t n = v.size();
    size_t rank = static_cast<size_t>((p / 100.0) * static_cast<double>(n) + 0.999999);
    rank = std::clamp<size_t>(rank, 1, n);
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(rank - 1), v.end());
    return static_cast<double>(v[rank - 1]) / 1e3;
}

}  // namespace

int main(int argc, char** argv) {
    double scale = 1.0;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--quick")) scale = 0.25;
        if (!std::strcmp(argv[i], "--smoke")) scale = 0.01;
    }
    const auto n = [&](double base) { return static_cast<uint64_t>(std::max(100.0, base * scale)); };
    std::fprintf(stderr, "ring_bench: throughput 64 B ...\n");
    const double t64 = throughput(n(20e6), 64);
    std::fprintf(stderr, "ring_bench: throughput 168 B ...\n");
    const double t168 = throughput(n(20e6), 168);
    std::fprintf(stderr, "ring_bench: one-way latency, consumer spinning ...\n");
    auto spin = latency(n(200e3), 20000, false);
    std::fprintf(stderr, "ring_bench: one-way latency, consumer parked on eventfd, 1 record / 50 us ...\n");
    auto park50 = latency(n(20e3), 50000, true);
    std::fprintf(stderr, "ring_bench: one-way latency, consumer parked on eventfd, 1 record / 200 us ...\n");
    auto park = latency(n(10e3), 200000, true);
    std::fprintf(stderr, "ring_bench: one-way latency, consumer parked on eventfd, 1 record / 1 ms ...\n");
    auto park1000 = latency(n(4e3), 1000000, true);

    std::printf("\n| C++ -> C++ over a shared-memory ring (memfd), 2 processes | value |\n|---|---:|\n");
    std::printf("| throughput, 64 B bodies | %.2f M records/s |\n", t64 / 1e6);
    std::printf("| throughput, 168 B bodies (new_order) | %.2f M records/s |\n", t168 / 1e6);
    std::printf("\n| one-way latency (µs) | n | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|\n");
    struct Row { const char* name; std::vector<uint64_t>* v; };
    std::string json = "{\"throughput_64B_per_s\": " + std::to_string(t64) +
                       ", \"throughput_168B_per_s\": " + std::to_string(t168);
    for (Row r : {Row{"consumer spinning, 1 record / 20 us", &spin},
                  Row{"consumer parked (eventfd doorbell), 1 record / 50 us", &park50},
                  Row{"consumer parked (eventfd doorbell), 1 record / 200 us", &park},
                  Row{"consumer parked (eventfd doorbell), 1 record / 1 ms", &park1000}}) {
        const double p50 = pct(*r.v, 50), p90 = pct(*r.v, 90), p99 = pct(*r.v, 99), p999 = pct(*r.v, 99.9),
                     mx = pct(*r.v, 100);
        std::printf("| %s | %zu | %.2f | %.2f | %.2f | %.2f | %.2f |\n", r.name, r.v->size(), p50, p90, p99, p999, mx);
        json += std::string(", \"") + (r.v == &spin ? "spin" : r.v == &park50 ? "parked_50us" : r.v == &park ? "parked_200us" : "parked_1ms") + "_us\": {\"p50\": " + std::to_string(p50) +
                ", \"p90\": " + std::to_string(p90) + ", \"p99\": " + std::to_string(p99) +
                ", \"p99.9\": " + std::to_string(p999) + ", \"max\": " + std::to_string(mx) + "}";
    }
    std::printf("\nJSON %s}\n", json.c_str());
    return 0;
}
