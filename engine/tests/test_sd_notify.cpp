// sd_notify by hand: the datagrams systemd would receive, over a path and an abstract socket, and
// the schedule of watchdog pings and status lines the loop sends from its beat.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#include "loop/sd_notify.hpp"

namespace {

// Plays systemd: a datagram socket bound to `name` (a path, or @abstract).
int bind_dgram(const std::string& name) {
    const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, name.data(), name.size());
    if (name[0] == '@') a.sun_path[0] = '\0';
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (name[0] == '@' ? 0 : 1));
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

std::string recv_all(int fd) {
    char buf[4096];
    const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

constexpr uint64_t kSec = 1000000000ull;

}  // namespace

TEST(SdNotify, SendsToAnAbstractSocketAndUnsetsTheEnvironment) {
    const std::string name = "@dgdo-gtest-notify-" + std::to_string(getpid());
    const int sys = bind_dgram(name);
    ASSERT_GE(sys, 0);
    setenv("NOTIFY_SOCKET", name.c_str(), 1);
    setenv("WATCHDOG_USEC", "2000000", 1);
    setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
    const auto n = dgdo::SdNotify::from_env();
    EXPECT_TRUE(n.enabled());
    EXPECT_EQ(n.watchdog_ns(), 2 * kSec);
    EXPECT_EQ(std::getenv("NOTIFY_SOCKET"), nullptr);  // not for our children
    EXPECT_EQ(std::getenv("WATCHDOG_USEC"), nullptr);
    ASSERT_TRUE(n.send("READY=1\nSTATUS=up\n"));
    EXPECT_EQ(recv_all(sys), "READY=1\nSTATUS=up\n");
    close(sys);
}

TEST(SdNotify, SendsToAPathSocket) {
    const std::string path = "/tmp/dgdo-gtest-notify-" + std::to_string(getpid()) + ".sock";
    unlink(path.c_str());
    const int sys = bind_dgram(path);
    ASSERT_GE(sys, 0);
    setenv("NOTIFY_SOCKET", path.c_str(), 1);
    unsetenv("WATCHDOG_USEC");
    const auto n = dgdo::SdNotify::from_env();
    EXPECT_EQ(n.watchdog_ns(), 0u);
    ASSERT_TRUE(n.send("WATCHDOG=1\n"));
    EXPECT_EQ(recv_all(sys), "WATCHDOG=1\n");
    close(sys);
    unlink(path.c_str());
}

TEST(SdNotify, WithoutNotifySocketNothingIsSentAndNoWatchdog) {
    unsetenv("NOTIFY_SOCKET");
    setenv("WATCHDOG_USEC", "1000000", 1);
    const auto n = dgdo::SdNotify::from_env();
    EXPECT_FALSE(n.enabled());
    EXPECT_EQ(n.watchdog_ns(), 0u);
    EXPECT_FALSE(n.send("READY=1\n"));
}

TEST(SdNotify, AnotherProcesssWatchdogIsNotOurs) {
    const std::string name = "@dgdo-gtest-notify-pid-" + std::to_string(getpid());
    const int sys = bind_dgram(name);
    ASSERT_GE(sys, 0);
    setenv("NOTIFY_SOCKET", name.c_str(), 1);
    setenv("WATCHDOG_USEC", "1000000", 1);
    setenv("WATCHDOG_PID", std::to_string(getpid() + 1).c_str(), 1);
    const auto n = dgdo::SdNotify::from_env();
    EXPECT_TRUE(n.enabled());
    EXPECT_EQ(n.watchdog_ns(), 0u);
    close(sys);
}

TEST(NotifySchedule, PingsEveryHalfPeriodAndSendsAChangedStatusAtMostOnceASecond) {
    dgdo::NotifySchedule s(2 * kSec);
    const uint64_t t0 = 100 * kSec;
    EXPECT_EQ(s.due(t0, "a"), "WATCHDOG=1\nSTATUS=a\n");
    EXPECT_EQ(s.due(t0 + kSec / 10, "b"), "");  // changed, but within the second
    EXPECT_EQ(s.due(t0 + kSec - 1, "b"), "");
    EXPECT_EQ(s.due(t0 + kSec, "b"), "WATCHDOG=1\nSTATUS=b\n");  // half of 2 s: ping; a second on: status
    EXPECT_EQ(s.due(t0 + kSec + kSec / 2, "b"), "");
    EXPECT_EQ(s.due(t0 + 2 * kSec, "b"), "WATCHDOG=1\n");  // unchanged status is not repeated
    EXPECT_EQ(s.due(t0 + 3 * kSec, "c"), "WATCHDOG=1\nSTATUS=c\n");
}

TEST(NotifySchedule, WithoutAWatchdogOnlyStatus) {
    dgdo::NotifySchedule s(0);
    EXPECT_EQ(s.due(kSec, "a"), "STATUS=a\n");
    EXPECT_EQ(s.due(5 * kSec, "a"), "");
}
