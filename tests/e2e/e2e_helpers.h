// Shared by the end-to-end tests: real mounts of a real server, and the
// fault proxy that sits between them.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

#include "../integration/helpers.h"
#include "../integration/test_server.h"

namespace tidefs {

// `tidefs status --json` of a mount.
inline std::string StatusOf(const std::string& mnt) {
  std::string out;
  RunCommand(std::string(TIDEFS_BINARY) + " status --json " + mnt + " 2>&1", &out);
  return out;
}

// Whether the mount's journal empties within `limit` (everything sent).
inline bool JournalEmptiesWithin(const std::string& mnt, std::chrono::milliseconds limit) {
  return Within(limit, [&] { return StatusOf(mnt).find("\"journal_pending\": 0") != std::string::npos; });
}

inline bool IsMounted(const std::string& path) {
  std::ifstream f("/proc/self/mounts");
  std::string line;
  while (std::getline(f, line))
    if (line.find(" " + path + " ") != std::string::npos) return true;
  return false;
}

// A mount that is unmounted (and waited for) in the destructor.
class TestMount {
 public:
  TestMount(const TestServer& server, const std::string& token, const std::string& dir,
            const std::string& extra = "")
      : TestMount(server.url(), token, dir, extra) {}
  // `prefix` goes before the command (e.g. "prlimit --nofile=128:128").
  // TIDEFS_E2E_VERBOSE=1 logs everything (-vvv) to <dir>/cache/mount.log.
  TestMount(const std::string& url, const std::string& token, const std::string& dir, const std::string& extra = "",
            const std::string& prefix = "")
      : dir_(dir) {
    mnt_ = dir + "/mnt";
    std::filesystem::create_directories(mnt_);
    std::string out;
    int rc = RunCommand(prefix + " " + std::string(TIDEFS_BINARY) + " mount --server " + url + " --project demo --token " +
                            token + " --cache-dir " + dir + "/cache " + extra +
                            (std::getenv("TIDEFS_E2E_VERBOSE") ? " -vvv " : " ") + mnt_ + " 2>&1",
                        &out);
    if (rc != 0 || !IsMounted(mnt_)) throw std::runtime_error("tidefs mount failed: " + out);
  }
  ~TestMount() {
    std::string out;
    // tidefs unmount returns once the mount's process has finished.
    RunCommand(std::string(TIDEFS_BINARY) + " unmount " + mnt_ + " 2>&1", &out);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (IsMounted(mnt_) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (IsMounted(mnt_)) RunCommand("fusermount3 -uz " + mnt_, &out);
  }
  const std::string& path() const { return mnt_; }

 private:
  std::string dir_, mnt_;
};

// The pid of the mount at `mnt` (from its status), or -1.
inline pid_t MountPid(const std::string& mnt) {
  std::string out;
  if (RunCommand(std::string(TIDEFS_BINARY) + " status --json " + mnt + " 2>&1", &out) != 0) return -1;
  size_t at = out.find("\"pid\": ");
  return at == std::string::npos ? -1 : std::stoi(out.substr(at + 7));
}

// Gone, or a zombie: it has exited (its files closed, its mount's fd
// too) and waits for its parent to reap it. (A daemon's parent is pid 1,
// which on some machines reaps only every second or two.)
inline bool WaitForExit(pid_t pid, std::chrono::seconds limit) {
  return Within(limit, [pid] {
    if (kill(pid, 0) != 0) return true;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    const size_t paren = line.rfind(')');
    return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
  });
}

// kill -9 of the mount at `mnt` (it must be running); returns once the
// process is gone and its dead mount point cleared. (A void function: the
// ASSERTs end only it; callers check HasFatalFailure where it matters.)
inline void KillMount(const std::string& mnt) {
  const pid_t pid = MountPid(mnt);
  ASSERT_GT(pid, 0);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  EXPECT_TRUE(WaitForExit(pid, std::chrono::seconds(10)));
  std::string out;
  RunCommand("fusermount3 -uz " + mnt + " 2>&1", &out);
}

// A file's bytes, "" if it cannot be opened (not there: tests wait for
// one to come); a failed read throws, saying where (a stream would stop at
// the failure and hand back what came before as all of it).
inline std::string ReadAll(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw std::system_error(err, std::generic_category(), "read " + path + " at " + std::to_string(out.size()));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

inline uint64_t ContentBytesSent(ApiClient& c) {
  auto m = c.Raw("GET", "//metrics");
  std::string key = "\ntidefs_content_bytes_sent_total ";
  size_t at = m->body.find(key);
  return at == std::string::npos ? 0 : std::stoull(m->body.substr(at + key.size()));
}

inline uint64_t SnapshotsServed(ApiClient& c) {
  auto m = c.Raw("GET", "//metrics");
  std::string key = "tidefs_http_requests_total{route=\"GET /snapshot\",status=\"200\"} ";
  size_t at = m->body.find(key);
  return at == std::string::npos ? 0 : std::stoull(m->body.substr(at + key.size()));
}

// tests/e2e/fault_proxy.py between a mount and the real server: cuts,
// corrupts or fails answers as its rule says (see the script).
class FaultProxy {
 public:
  FaultProxy(const TestServer& server, const std::string& dir) : dir_(dir) {
    std::string port = server.url().substr(server.url().rfind(':') + 1);
    SetRule("pass");
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      execlp("python3", "python3", FAULT_PROXY_SCRIPT, port.c_str(), (dir + "/proxy.port").c_str(),
             (dir + "/proxy.rule").c_str(), (dir + "/proxy.stats").c_str(), (char*)nullptr);
      _exit(127);
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!std::filesystem::exists(dir + "/proxy.port") && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!std::filesystem::exists(dir + "/proxy.port")) throw std::runtime_error("the fault proxy did not start (is python3 there?)");
    url_ = "http://127.0.0.1:" + ReadAll(dir + "/proxy.port");
  }
  ~FaultProxy() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  // "pass", or "ACTION PATH_PART ARG TIMES" (cut / corrupt / status500 / refuse / hold).
  void SetRule(const std::string& rule) {
    { std::ofstream(dir_ + "/proxy.rule.tmp") << rule; }
    std::filesystem::rename(dir_ + "/proxy.rule.tmp", dir_ + "/proxy.rule");
  }
  // Body bytes of answers on a route ("content", "snapshot") passed to the mount.
  uint64_t BodyBytes(const std::string& route) const {
    std::string s = ReadAll(dir_ + "/proxy.stats");
    std::string key = "\"" + route + "\": ";
    size_t at = s.find(key);
    return at == std::string::npos ? 0 : std::stoull(s.substr(at + key.size()));
  }
  // Requests a rule has applied to so far.
  uint64_t Faults() const {
    std::string s = ReadAll(dir_ + "/proxy.stats");
    size_t at = s.find("\"faults\": ");
    return at == std::string::npos ? 0 : std::stoull(s.substr(at + 10));
  }
  // Answers a hold rule has kept back so far (released or not).
  uint64_t Held() const {
    std::string s = ReadAll(dir_ + "/proxy.stats");
    size_t at = s.find("\"held\": ");
    return at == std::string::npos ? 0 : std::stoull(s.substr(at + 8));
  }
  const std::string& url() const { return url_; }

 private:
  std::string dir_, url_;
  pid_t pid_ = -1;
};


}  // namespace tidefs
