// systemd's readiness/watchdog protocol (sd_notify(3)), by hand: one datagram of `KEY=VALUE`
// lines to the AF_UNIX socket in $NOTIFY_SOCKET. No libsystemd: the protocol is a sendto(), and
// the engine links nothing it does not need. Outside systemd (no $NOTIFY_SOCKET) every call is a
// no-op, so the loop calls it unconditionally.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace dgdo {

class SdNotify {
public:
    // Reads $NOTIFY_SOCKET (a path, or @NAME for an abstract socket), $WATCHDOG_USEC and
    // $WATCHDOG_PID, then unsets them: they are ours, not for any process we might start.
    static SdNotify from_env();

    SdNotify() = default;
    ~SdNotify();
    SdNotify(SdNotify&& o) noexcept;
    SdNotify& operator=(SdNotify&& o) noexcept;
    SdNotify(const SdNotify&) = delete;
    SdNotify& operator=(const SdNotify&) = delete;

    bool enabled() const { return fd_ >= 0; }
    // The watchdog period systemd expects pings within (WatchdogSec=), 0 when it watches nothing.
    uint64_t watchdog_ns() const { return watchdog_ns_; }
    // Sends `state` ("READY=1\nSTATUS=..."); false (and nothing else happens) when it cannot.
    bool send(std::string_view state) const;

private:
    int fd_ = -1;
    sockaddr_un addr_{};
    socklen_t len_ = 0;
    uint64_t watchdog_ns_ = 0;
};

// What to tell systemd on one beat: a watchdog ping every half period (sd_watchdog_enabled(3)'s
// advice: one late beat must not cost a restart) and the status line when it changed, at most
// once a second. Pure, so the timing is testable without a socket.
class NotifySchedule {
public:
    explicit NotifySchedule(uint64_t watchdog_ns) : watchdog_ns_(watchdog_ns) {}
    // The message due at `now_ns` given the current status line; "" when nothing is due.
    std::string due(uint64_t now_ns, const std::string& status);

private:
    uint64_t watchdog_ns_;
    uint64_t pinged_at_ = 0;
    uint64_t status_at_ = 0;
    bool started_ = false;
    std::string status_;
};

}  // namespace dgdo
