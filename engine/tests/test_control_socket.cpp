// What an engine leaves for others to find: a control socket (path or abstract name) that a
// second engine must not take over, and ring segments that are memfds with no name at all.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "dgdo/ring.h"
#include "loop/control_server.hpp"
#include "loop/shm_segment.hpp"

namespace {

std::string unique(const char* what) { return "dgdo-gtest-" + std::to_string(getpid()) + "-" + what; }

// Whether /proc/net/unix lists a socket bound to `abstract` ("@name"): the kernel's own view.
bool abstract_bound(const std::string& abstract) {
    std::ifstream in("/proc/net/unix");
    std::string line;
    while (std::getline(in, line))
        if (line.size() >= abstract.size() && line.compare(line.size() - abstract.size(), abstract.size(), abstract) == 0)
            return true;
    return false;
}

}  // namespace

TEST(ControlSocket, PathOfALiveEngineIsNotTakenOverButADeadOnesIs) {
    const std::string path = "/tmp/" + unique("path") + ".sock";
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
    dgdo::unlink_control(path);
    struct stat st {};
    EXPECT_NE(lstat(path.c_str(), &st), 0);
}

TEST(ControlSocket, AbstractNameIsRefusedWhileLiveAndGoneWithItsHolder) {
    const std::string name = "@" + unique("abstract");
    EXPECT_EQ(dgdo::probe_control(name), 0);
    const int first = dgdo::listen_control(name);
    ASSERT_GE(first, 0);
    EXPECT_TRUE(abstract_bound(name));
    EXPECT_EQ(dgdo::probe_control(name), -EADDRINUSE);
    EXPECT_EQ(dgdo::listen_control(name), -EADDRINUSE);
    struct stat st {};
    EXPECT_NE(lstat(name.c_str(), &st), 0);  // no file named "@..." anywhere (relative to the cwd)
    close(first);                             // as a kill -9 would: nothing to unlink
    EXPECT_FALSE(abstract_bound(name));
    EXPECT_EQ(dgdo::probe_control(name), 0);
    const int second = dgdo::listen_control(name);
    EXPECT_GE(second, 0);
    close(second);
}

TEST(ControlSocket, AcceptTakesAPeerOfOurOwnUser) {
    const std::string name = "@" + unique("accept");
    const int listener = dgdo::listen_control(name);
    ASSERT_GE(listener, 0);
    EXPECT_EQ(dgdo::accept_control(listener), -EAGAIN);  // nobody yet
    const int client = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path + 1, name.data() + 1, name.size() - 1);
    ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&addr),
                      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size())),
              0);
    const int server = dgdo::accept_control(listener);
    EXPECT_GE(server, 0);  // same uid: SO_PEERCRED lets it through
    close(server);
    close(client);
    close(listener);
}

TEST(RingSegment, IsAnUnnamedSealedMemfdThatAPeerMappingOutlives) {
    dgdo::ShmSegment seg;
    ASSERT_EQ(seg.create("dgdo.gtest.w1.in", 4096, 77), 0);
    ASSERT_GE(seg.fd(), 0);
    EXPECT_EQ(fcntl(seg.fd(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    char link[256] = {};
    const std::string fd_path = "/proc/self/fd/" + std::to_string(seg.fd());
    ASSERT_GT(readlink(fd_path.c_str(), link, sizeof link - 1), 0);
    EXPECT_EQ(std::string(link).rfind("/memfd:dgdo.gtest.w1.in", 0), 0u) << link;
    EXPECT_EQ(access("/dev/shm/dgdo.gtest.w1.in", F_OK), -1);  // nothing in /dev/shm
    const int seals = fcntl(seg.fd(), F_GET_SEALS);
    EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    EXPECT_NE(ftruncate(seg.fd(), 0), 0);  // nobody can shrink it under a peer's mapping

    // A peer (here: a second mapping through the fd, as the sidecar makes it) keeps the memory
    // after the owner lets go: what a sidecar needs to salvage the ring of a dead engine.
    const size_t size = dgdo_ring_segment_size(4096);
    void* peer = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, seg.fd(), 0);
    ASSERT_NE(peer, MAP_FAILED);
    seg.destroy();
    EXPECT_EQ(seg.fd(), -1);
    EXPECT_EQ(dgdo_ring_check(peer, size, 77), DGDO_RING_OK);
    munmap(peer, size);
}
