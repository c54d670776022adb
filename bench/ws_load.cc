// Idle WebSocket subscribers for bench/realtime_bench.sh: one process of
// the load generator (epoll, one thread, so the figures are the server's,
// not the generator's). Opens N subscriptions to GET /v1/projects/P/events
// from source address SRC, answers pings, and records for every commit
// event the CLOCK_MONOTONIC time it arrived.
//
// Usage: tidefs_ws_load PORT PROJECT TOKEN SRC N READY_FILE OUT_FILE SECONDS
// READY_FILE gets the number connected once all are (or after 60 s);
// OUT_FILE gets one "seq time" line per commit event received.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct Conn {
  int fd = -1;
  bool upgraded = false;
  std::string in;
};

void WriteFileAtomically(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  FILE* f = fopen(tmp.c_str(), "w");
  if (!f) return;
  fputs(text.c_str(), f);
  fclose(f);
  rename(tmp.c_str(), path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 9) {
    fprintf(stderr, "usage: %s PORT PROJECT TOKEN SRC N READY_FILE OUT_FILE SECONDS\n", argv[0]);
    return 2;
  }
  const int port = atoi(argv[1]);
  const std::string project = argv[2], token = argv[3], src = argv[4];
  const int n = atoi(argv[5]);
  const std::string ready = argv[6], out = argv[7];
  const double seconds = atof(argv[8]);
  const std::string req = "GET /v1/projects/" + project + "/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer " + token + "\r\n\r\n";
  int ep = epoll_create1(0);
  std::vector<Conn> conns(n);
  std::vector<std::pair<unsigned long long, double>> arrivals;
  arrivals.reserve(static_cast<size_t>(n) * 8);
  int upgraded = 0;
  for (int i = 0; i < n; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in local{};
    local.sin_family = AF_INET;
    inet_pton(AF_INET, src.c_str(), &local.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) { perror("bind"); return 1; }
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) { perror("connect"); return 1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) { perror("write"); return 1; }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    conns[i].fd = fd;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = i;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  const double start = Now();
  bool reported = false;
  std::vector<epoll_event> evs(1024);
  char buf[65536];
  while (Now() - start < seconds + 60) {
    if (!reported && (upgraded == n || Now() - start > 60)) {
      WriteFileAtomically(ready, std::to_string(upgraded));
      reported = true;
    }
    if (reported && Now() - start > seconds) break;
    int k = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 50);
    const double t = Now();
    for (int e = 0; e < k; ++e) {
      Conn& c = conns[evs[e].data.u32];
      for (;;) {
        ssize_t r = read(c.fd, buf, sizeof buf);
        if (r <= 0) {
          if (r == 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr); close(c.fd); }
          break;
        }
        c.in.append(buf, r);
      }
      if (!c.upgraded) {
        size_t end = c.in.find("\r\n\r\n");
        if (end == std::string::npos) continue;
        if (c.in.compare(0, 12, "HTTP/1.1 101") != 0) {
          fprintf(stderr, "upgrade refused: %s\n", c.in.substr(0, end).c_str());
          return 1;
        }
        c.in.erase(0, end + 4);
        c.upgraded = true;
        ++upgraded;
      }
      // Frames from the server (unmasked).
      size_t at = 0;
      for (;;) {
        if (c.in.size() - at < 2) break;
        const unsigned char b0 = c.in[at], b1 = c.in[at + 1];
        uint64_t len = b1 & 0x7f;
        size_t hdr = 2;
        if (len == 126) {
          if (c.in.size() - at < 4) break;
          len = (static_cast<unsigned char>(c.in[at + 2]) << 8) | static_cast<unsigned char>(c.in[at + 3]);
          hdr = 4;
        } else if (len == 127) {
          if (c.in.size() - at < 10) break;
          len = 0;
          for (int i = 0; i < 8; ++i) len = (len << 8) | static_cast<unsigned char>(c.in[at + 2 + i]);
          hdr = 10;
        }
        if (c.in.size() - at < hdr + len) break;
        const char* p = c.in.data() + at + hdr;
        const int op = b0 & 0x0f;
        if (op == 0x9) {  // ping: pong with the same payload, masked with 0
          std::string pong = "\x8a";
          pong += static_cast<char>(0x80 | len);
          pong += std::string(4, '\0');
          pong.append(p, len);
          (void)!write(c.fd, pong.data(), pong.size());
        } else if (op == 0x1 && len > 16 && std::memcmp(p, "{\"type\":\"commit\"", 16) == 0) {
          const char* s = static_cast<const char*>(memmem(p, len, "\"seq\":", 6));
          if (s) arrivals.emplace_back(strtoull(s + 6, nullptr, 10), t);
        }
        at += hdr + len;
      }
      c.in.erase(0, at);
    }
  }
  if (!reported) WriteFileAtomically(ready, std::to_string(upgraded));
  std::string text;
  for (const auto& [seq, when] : arrivals) text += std::to_string(seq) + " " + std::to_string(when) + "\n";
  WriteFileAtomically(out, text);
  return 0;
}
