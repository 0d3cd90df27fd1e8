// Stale vs live: a leftover segment or control socket is taken over only when its engine is gone.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <string>

#include "dgdo/ring.h"
#include "loop/control_server.hpp"
#include "loop/shm_segment.hpp"

namespace {

uint64_t mono_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::string unique(const char* what) {
    return "/dgdo.gtest" + std::to_string(getpid()) + "." + what + ".w1.in";
}

// A segment as a crashed engine would leave it: formatted, its consumer pid and heartbeat set.
void craft(const std::string& name, int32_t pid, uint64_t epoch, uint64_t heartbeat_ns) {
    shm_unlink(name.c_str());
    const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    ASSERT_GE(fd, 0);
    const size_t size = dgdo_ring_segment_size(4096);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    ASSERT_NE(p, MAP_FAILED);
    ASSERT_EQ(dgdo_ring_format(p, 4096, epoch), DGDO_RING_OK);
    dgdo_ring_consumer c{};
    dgdo_ring_consumer_init(&c, p, pid);
    dgdo_ring_consumer_heartbeat(&c, heartbeat_ns);
    munmap(p, size);
}

uint64_t epoch_of(const std::string& name) {
    const int fd = shm_open(name.c_str(), O_RDONLY, 0);
    if (fd < 0) return 0;
    void* p = mmap(nullptr, DGDO_RING_HEADER_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    const uint64_t e = static_cast<const dgdo_ring_header*>(p)->epoch;
    munmap(p, DGDO_RING_HEADER_SIZE);
    return e;
}

pid_t dead_pid() {
    const pid_t pid = fork();
    if (pid == 0) _exit(0);
    waitpid(pid, nullptr, 0);
    return pid;  // reaped: no process has this pid (until the kernel reuses it, which takes a while)
}

struct LiveChild {
    pid_t pid = fork();
    LiveChild() {
        if (pid == 0) {
            pause();
            _exit(0);
        }
    }
    ~LiveChild() {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
    }
};

}  // namespace

TEST(RingSegmentOwner, DeadPidIsStaleAndReplaced) {
    const std::string name = unique("dead");
    craft(name, dead_pid(), 111, mono_ns());  // heartbeat fresh, but its engine is gone
    const auto o = dgdo::inspect_segment(name, false, mono_ns());
    EXPECT_TRUE(o.exists && o.valid);
    EXPECT_FALSE(o.pid_alive);
    EXPECT_FALSE(o.live);
    EXPECT_EQ(o.epoch, 111u);
    dgdo::ShmSegment seg;
    ASSERT_EQ(seg.create(name, 4096, 222, false), 0);
    EXPECT_EQ(epoch_of(name), 222u);
}

TEST(RingSegmentOwner, LivePidWithFreshHeartbeatIsRefused) {
    const std::string name = unique("live");
    LiveChild engine;
    craft(name, engine.pid, 333, mono_ns());
    const auto o = dgdo::inspect_segment(name, false, mono_ns());
    EXPECT_TRUE(o.pid_alive);
    EXPECT_TRUE(o.live);
    dgdo::ShmSegment seg;
    EXPECT_EQ(seg.create(name, 4096, 444, false), -EBUSY);
    EXPECT_EQ(epoch_of(name), 333u);  // untouched
    shm_unlink(name.c_str());
}

TEST(RingSegmentOwner, LivePidWithOldHeartbeatIsStale) {
    const std::string name = unique("wedged");
    LiveChild engine;  // alive (or a reused pid), but it has not beaten for 10 s
    craft(name, engine.pid, 555, mono_ns() - 10'000'000'000ull);
    EXPECT_FALSE(dgdo::inspect_segment(name, false, mono_ns()).live);
    dgdo::ShmSegment seg;
    ASSERT_EQ(seg.create(name, 4096, 666, false), 0);
    EXPECT_EQ(epoch_of(name), 666u);
}

TEST(RingSegmentOwner, GarbageIsStale) {
    const std::string name = unique("garbage");
    shm_unlink(name.c_str());
    const int fd = shm_open(name.c_str(), O_CREAT | O_RDWR, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 100), 0);
    close(fd);
    const auto o = dgdo::inspect_segment(name, false, mono_ns());
    EXPECT_TRUE(o.exists);
    EXPECT_FALSE(o.valid || o.live);
    dgdo::ShmSegment seg;
    EXPECT_EQ(seg.create(name, 4096, 7, false), 0);
}

TEST(RingSegmentOwner, ControlSocketOfALiveEngineIsNotTakenOver) {
    const std::string path = "/tmp/dgdo-gtest-" + std::to_string(getpid()) + ".sock";
    unlink(path.c_str());
    const int first = dgdo::listen_control(path);
    ASSERT_GE(first, 0);
    EXPECT_EQ(dgdo::probe_control(path), -EADDRINUSE);
    EXPECT_EQ(dgdo::listen_control(path), -EADDRINUSE);
    close(first);  // the first engine dies: its socket file stays, nobody listens
    EXPECT_EQ(dgdo::probe_control(path), 0);
    const int second = dgdo::listen_control(path);
    EXPECT_GE(second, 0);
    close(second);
    unlink(path.c_str());
}
