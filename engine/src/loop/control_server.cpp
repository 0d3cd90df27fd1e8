#include "loop/control_server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace dgdo {

int probe_control(const std::string& path) {
    sockaddr_un addr{};
    if (path.size() >= sizeof addr.sun_path) return -ENAMETOOLONG;
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    // Nonblocking, so a live engine with a full backlog (EAGAIN) is not waited for: it is live too.
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    const int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    const int err = rc == 0 ? 0 : errno;
    close(fd);  // the live engine sees a connection close before hello: it drops it, nothing else
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS) return -EADDRINUSE;
    if (err == ECONNREFUSED || err == ENOENT) return 0;
    return -err;
}

int listen_control(const std::string& path) {
    sockaddr_un addr{};
    if (path.size() >= sizeof addr.sun_path) return -ENAMETOOLONG;
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) return -EEXIST;  // never clobber a file that is not a socket
        if (const int live = probe_control(path); live != 0) return live;
        unlink(path.c_str());  // nobody listens: the socket file of a dead run
    }
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || chmod(path.c_str(), 0600) != 0 ||
        listen(fd, 64) != 0) {
        const int err = -errno;
        close(fd);
        unlink(path.c_str());
        return err;
    }
    return fd;
}

int accept_control(int listen_fd) {
    const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

HelloRead recv_hello(int fd, dgdo_ctl_hello* hello) {
    const ssize_t n = recv(fd, hello, sizeof *hello, 0);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? HelloRead::Again : HelloRead::Closed;
    if (n == 0) return HelloRead::Closed;
    if (static_cast<size_t>(n) != sizeof *hello || hello->magic != DGDO_CTL_MAGIC || hello->version != DGDO_CTL_VERSION)
        return HelloRead::Bad;
    return HelloRead::Ok;
}

int send_attach(int fd, const dgdo_ctl_attach& attach, const int* fds, int nfds) {
    if (nfds < 0 || nfds > 2) return -EINVAL;
    iovec iov{const_cast<dgdo_ctl_attach*>(&attach), sizeof attach};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
    if (nfds > 0) {
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(static_cast<size_t>(nfds) * sizeof(int));
        cmsghdr* cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(static_cast<size_t>(nfds) * sizeof(int));
        std::memcpy(CMSG_DATA(cm), fds, static_cast<size_t>(nfds) * sizeof(int));
    }
    const ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) return -errno;
    return static_cast<size_t>(n) == sizeof attach ? 0 : -EMSGSIZE;
}

}  // namespace dgdo
