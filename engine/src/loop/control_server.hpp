// The control socket: listen, accept, hello in, attach (+ two eventfds) out.
#pragma once

#include <string>

#include "dgdo/control.h"

namespace dgdo {

// Whether an engine listens at `path`: -EADDRINUSE when a connect() succeeds (a live engine,
// even a stopped one, whose kernel still accepts), 0 when nobody does (no file, or the socket
// file of a dead run), else -errno.
int probe_control(const std::string& path);

// Binds a SOCK_SEQPACKET listener at `path`, mode 0600. The socket file of a dead run is
// replaced; a live engine's is not (-EADDRINUSE), so a second engine never silently takes
// over the first one's path. Returns the fd or -errno.
int listen_control(const std::string& path);

// Accepts one pending connection (nonblocking, cloexec); -errno when none.
int accept_control(int listen_fd);

enum class HelloRead { Ok, Again, Closed, Bad };
// Reads one hello message from a freshly accepted connection.
HelloRead recv_hello(int fd, dgdo_ctl_hello* hello);

// Sends `attach` with `nfds` descriptors in one SCM_RIGHTS message. 0 or -errno.
int send_attach(int fd, const dgdo_ctl_attach& attach, const int* fds, int nfds);

}  // namespace dgdo
