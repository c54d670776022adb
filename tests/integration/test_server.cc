#include "test_server.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

namespace tidefs {

int RunCommand(const std::string& cmd, std::string* out) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  std::string s;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) s.append(buf, n);
  int rc = pclose(p);
  if (out) *out = s;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string MakeTempDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

TestServer::TestServer() {
  dir_ = MakeTempDir("tidefs-server");
  data_ = dir_ + "/data";
  Admin("project create demo");
  rw_token = NewToken("demo", "laptop");
  ro_token = NewToken("demo", "viewer", true);
  Start();
}

TestServer::~TestServer() {
  Stop();
  std::filesystem::remove_all(dir_);
}

void TestServer::Start() {
  std::string ready = dir_ + "/ready";
  std::filesystem::remove(ready);
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive a crashed test
    // A restart keeps the port, so clients (and mounts) reconnect.
    std::string listen = "127.0.0.1:" + (url_.empty() ? std::string("0") : url_.substr(url_.rfind(':') + 1));
    std::vector<std::string> args = {TIDEFS_BINARY, "serve", "--data", data_, "--listen", listen, "--ready-file", ready};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(TIDEFS_BINARY, argv.data());
    _exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream f(ready);
    std::string url;
    if (f && std::getline(f, url) && !url.empty()) {
      url_ = url;
      return;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("tidefs serve exited during start-up");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("tidefs serve did not become ready within 20 s");
}

void TestServer::Kill() { StopWith(SIGKILL); }
void TestServer::Stop() { StopWith(SIGTERM); }

void TestServer::StopWith(int sig) {
  if (pid_ <= 0) return;
  kill(pid_, sig);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

std::string TestServer::Admin(const std::string& args, int* status) {
  std::string out;
  int rc = RunCommand(std::string(TIDEFS_BINARY) + " admin --data " + data_ + " " + args + " 2>&1", &out);
  if (status) *status = rc;
  else if (rc != 0) throw std::runtime_error("tidefs admin " + args + " failed: " + out);
  return out;
}

std::string TestServer::NewToken(const std::string& project, const std::string& device, bool read_only) {
  std::string out = Admin("token create --project " + project + " --device " + device + (read_only ? " --read-only" : ""));
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out.substr(out.rfind('\n') + 1);
}

ApiClient TestServer::Client(const std::string& token, const std::string& project) const {
  ClientOptions o;
  o.server = url_;
  o.project = project;
  o.token = token;
  o.retries = 0;
  return ApiClient(o);
}

}  // namespace tidefs
