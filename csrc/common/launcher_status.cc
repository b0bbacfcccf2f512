#include "common/launcher_status.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "common/config.h"

namespace fusecomm {

namespace {
constexpr int kWaitMs = 1000;  // per step (connect, reply): the launcher is local or close

struct Address {
  std::string host, port, token;
};

bool ParseAddress(const std::string& spec, Address* out) {
  const size_t token_colon = spec.rfind(':');
  if (token_colon == std::string::npos || token_colon == 0) return false;
  const size_t port_colon = spec.rfind(':', token_colon - 1);
  if (port_colon == std::string::npos || port_colon == 0) return false;
  out->host = spec.substr(0, port_colon);
  out->port = spec.substr(port_colon + 1, token_colon - port_colon - 1);
  out->token = spec.substr(token_colon + 1);
  return !out->port.empty() && !out->token.empty();
}

bool WaitFor(int fd, short events) {
  pollfd p{fd, events, 0};
  int rc;
  do {
    rc = poll(&p, 1, kWaitMs);
  } while (rc < 0 && errno == EINTR);
  return rc == 1 && (p.revents & events);
}

int Connect(const Address& address) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(address.host.c_str(), address.port.c_str(), &hints, &found) != 0) return -1;
  int fd = -1;
  for (addrinfo* a = found; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int error = 0;
    socklen_t len = sizeof(error);
    const bool connected =
        connect(fd, a->ai_addr, a->ai_addrlen) == 0 ||
        (errno == EINPROGRESS && WaitFor(fd, POLLOUT) &&
         getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) == 0 && error == 0);
    if (!connected) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  return fd;
}
}  // namespace

std::string LauncherStatusAddress() { return EnvString("FUSECOMM_RUN_STATUS", ""); }

std::string LauncherReportedFailure(const std::string& spec) {
  Address address;
  if (!ParseAddress(spec, &address)) return "";
  const int fd = Connect(address);
  if (fd < 0) return "";
  const std::string request = address.token + "\n";
  std::string reply;
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
      static_cast<ssize_t>(request.size())) {
    char buffer[512];
    while (reply.find('\n') == std::string::npos && reply.size() < 4096 && WaitFor(fd, POLLIN)) {
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      reply.append(buffer, static_cast<size_t>(n));
    }
  }
  close(fd);
  // "failed: <text>" or "none"; anything else is not the launcher (a stale address).
  static const std::string kPrefix = "failed: ";
  const size_t end = reply.find('\n');
  if (end == std::string::npos || reply.compare(0, kPrefix.size(), kPrefix) != 0) return "";
  return reply.substr(kPrefix.size(), end - kPrefix.size());
}

}  // namespace fusecomm
