#include "loop/control_server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

namespace dgdo {

namespace {

// The sockaddr for `control` and its length: an abstract name is sun_path[0] = '\0' followed by
// the name's bytes (no terminator; the length says where it ends), a path is NUL-terminated.
int make_addr(const std::string& control, sockaddr_un* addr, socklen_t* len) {
    *addr = {};
    addr->sun_family = AF_UNIX;
    if (control.size() >= sizeof addr->sun_path) return -ENAMETOOLONG;
    if (is_abstract(control)) {
        if (control.size() < 2) return -EINVAL;
        std::memcpy(addr->sun_path + 1, control.data() + 1, control.size() - 1);
        *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + control.size());
    } else {
        std::memcpy(addr->sun_path, control.c_str(), control.size() + 1);
        *len = sizeof *addr;
    }
    return 0;
}

}  // namespace

int probe_control(const std::string& control) {
    sockaddr_un addr;
    socklen_t len;
    if (const int rc = make_addr(control, &addr, &len); rc != 0) return rc;
    // Nonblocking, so a live engine with a full backlog (EAGAIN) is not waited for: it is live too.
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    const int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), len);
    const int err = rc == 0 ? 0 : errno;
    close(fd);  // the live engine sees a connection close before hello: it drops it, nothing else
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS) return -EADDRINUSE;
    if (err == ECONNREFUSED || err == ENOENT) return 0;
    return -err;
}

int listen_control(const std::string& control) {
    sockaddr_un addr;
    socklen_t len;
    if (const int rc = make_addr(control, &addr, &len); rc != 0) return rc;
    const bool abstract = is_abstract(control);
    struct stat st {};
    if (!abstract && lstat(control.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) return -EEXIST;  // never clobber a file that is not a socket
        if (const int live = probe_control(control); live != 0) return live;
        unlink(control.c_str());  // nobody listens: the socket file of a dead run
    }
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || (!abstract && chmod(control.c_str(), 0600) != 0) ||
        listen(fd, 64) != 0) {
        const int err = -errno;
        close(fd);
        // Only a path we bound ourselves is ours to remove (EADDRINUSE: someone else's).
        if (!abstract && err != -EADDRINUSE) unlink(control.c_str());
        return err;
    }
    return fd;
}

void unlink_control(const std::string& control) {
    if (!is_abstract(control)) unlink(control.c_str());
}

int accept_control(int listen_fd) {
    const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return -errno;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != geteuid() && cred.uid != 0)) {
        close(fd);
        return -EPERM;
    }
    return fd;
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
    if (nfds < 0 || nfds > DGDO_CTL_NFDS) return -EINVAL;
    iovec iov{const_cast<dgdo_ctl_attach*>(&attach), sizeof attach};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(DGDO_CTL_NFDS * sizeof(int))] = {};
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
