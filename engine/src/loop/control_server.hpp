// The control socket: listen, accept, hello in, attach (+ doorbells and ring memfds) out.
#pragma once

#include <string>

#include "dgdo/control.h"

namespace dgdo {

// A control name starting with '@' is a Linux abstract socket name: no file, gone with the
// last process that holds it (nothing to leave behind in /tmp, even after kill -9).
inline bool is_abstract(const std::string& control) { return !control.empty() && control[0] == '@'; }

// Whether an engine listens at `control`: -EADDRINUSE when a connect() succeeds (a live engine,
// even a stopped one, whose kernel still accepts), 0 when nobody does (no file, or the socket
// file of a dead run), else -errno.
int probe_control(const std::string& control);

// Binds a SOCK_SEQPACKET listener at `control`. A path gets mode 0600; the socket file of a
// dead run there is replaced, a live engine's is not (-EADDRINUSE), so a second engine never
// silently takes over the first one's path. An abstract name is refused by the kernel itself
// while in use (-EADDRINUSE). Returns the fd or -errno.
int listen_control(const std::string& control);

// Removes what listen_control() left in the file system: the socket file of a path, nothing
// for an abstract name.
void unlink_control(const std::string& control);

// Accepts one pending connection (nonblocking, cloexec). -EAGAIN when none is left; -EPERM
// for (and after closing) a peer running as another user than ours and not root; else -errno.
int accept_control(int listen_fd);

enum class HelloRead { Ok, Again, Closed, Bad };
// Reads one hello message from a freshly accepted connection.
HelloRead recv_hello(int fd, dgdo_ctl_hello* hello);

// Sends `attach` with `nfds` (0..DGDO_CTL_NFDS) descriptors in one SCM_RIGHTS message. 0 or -errno.
int send_attach(int fd, const dgdo_ctl_attach& attach, const int* fds, int nfds);

}  // namespace dgdo
