// TestServer: the real `tidefs serve` binary on an ephemeral loopback port
// with a temp data dir, a project and tokens. Stops the server and removes
// its files in the destructor.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "client/api_client.h"

namespace tidefs {

// Runs a command, returns its exit status and stdout.
int RunCommand(const std::string& cmd, std::string* out);
// A fresh temp directory, removed by the owner.
std::string MakeTempDir(const std::string& prefix);

class TestServer {
 public:
  // Starts a server with project "demo", and tokens for device "laptop"
  // (read-write) and "viewer" (read-only).
  TestServer();
  ~TestServer();

  const std::string& url() const { return url_; }
  const std::string& data_dir() const { return data_; }
  std::string Admin(const std::string& args, int* status = nullptr);
  // A new token, from `tidefs admin token create`.
  std::string NewToken(const std::string& project, const std::string& device, bool read_only = false);
  ApiClient Client(const std::string& token, const std::string& project = "demo") const;

  std::string rw_token, ro_token;
  // More flags for `tidefs serve`, from the next Start on.
  std::vector<std::string> extra_args;

  void Start();
  void Stop();  // SIGTERM and wait
  void Kill();  // SIGKILL and wait
  pid_t pid() const { return pid_; }

 private:
  void StopWith(int sig);
  std::string dir_, data_, url_;
  pid_t pid_ = -1;
};

}  // namespace tidefs
