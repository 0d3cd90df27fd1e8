#include "loop/sd_notify.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace dgdo {

SdNotify SdNotify::from_env() {
    SdNotify n;
    const char* path = std::getenv("NOTIFY_SOCKET");
    const char* usec = std::getenv("WATCHDOG_USEC");
    const char* pid = std::getenv("WATCHDOG_PID");
    // WATCHDOG_PID names the process systemd watches; a parent's variables inherited by accident
    // (or another main process's) do not make us the watched one.
    const bool ours = pid == nullptr || std::strtoll(pid, nullptr, 10) == static_cast<long long>(getpid());
    if (usec != nullptr && ours) {
        char* end = nullptr;
        const unsigned long long us = std::strtoull(usec, &end, 10);
        if (end != usec && *end == '\0') n.watchdog_ns_ = static_cast<uint64_t>(us) * 1000u;
    }
    const size_t len = path == nullptr ? 0 : std::strlen(path);
    if (len >= 2 && len < sizeof n.addr_.sun_path && (path[0] == '/' || path[0] == '@')) {
        n.addr_.sun_family = AF_UNIX;
        std::memcpy(n.addr_.sun_path, path, len);
        if (path[0] == '@') n.addr_.sun_path[0] = '\0';  // abstract: a leading NUL, length-delimited
        n.len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len + (path[0] == '/' ? 1 : 0));
        n.fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    }
    if (n.fd_ < 0) n.watchdog_ns_ = 0;  // nobody to ping
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    return n;
}

SdNotify::~SdNotify() {
    if (fd_ >= 0) close(fd_);
}

SdNotify::SdNotify(SdNotify&& o) noexcept { *this = std::move(o); }

SdNotify& SdNotify::operator=(SdNotify&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) close(fd_);
        fd_ = std::exchange(o.fd_, -1);
        addr_ = o.addr_;
        len_ = o.len_;
        watchdog_ns_ = o.watchdog_ns_;
    }
    return *this;
}

bool SdNotify::send(std::string_view state) const {
    if (fd_ < 0 || state.empty()) return false;
    // Nonblocking: a stalled systemd must never stall the loop. A lost ping is retried next beat.
    const ssize_t n = sendto(fd_, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr_), len_);
    return n == static_cast<ssize_t>(state.size());
}

std::string NotifySchedule::due(uint64_t now_ns, const std::string& status) {
    constexpr uint64_t kStatusEveryNs = 1000000000ull;
    std::string msg;
    if (watchdog_ns_ > 0 && (!started_ || now_ns - pinged_at_ >= watchdog_ns_ / 2)) {
        msg += "WATCHDOG=1\n";
        pinged_at_ = now_ns;
    }
    if ((!started_ || now_ns - status_at_ >= kStatusEveryNs) && status != status_) {
        msg += "STATUS=" + status + "\n";
        status_ = status;
        status_at_ = now_ns;
    }
    started_ = true;
    return msg;
}

}  // namespace dgdo
