// tidefs: one binary, with subcommands.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "client/api_client.h"
#include "client/importer.h"
#include "core/config_file.h"
#include "core/logging.h"
#include "mount/fuse_mount.h"
#include "server/admin.h"

namespace {

using namespace tidefs;

int Fail(const Status& st) {
  fprintf(stderr, "tidefs: %s\n", st.message().c_str());
  return st.code() == Code::kInvalidArgument ? 2 : 1;
}

Status ParseListen(const std::string& listen, std::string* host, uint16_t* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) return Status::Invalid("--listen must be HOST:PORT, got \"" + listen + "\"");
  *host = listen.substr(0, colon);
  if (host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  std::string p = listen.substr(colon + 1);
  char* end = nullptr;
  long v = std::strtol(p.c_str(), &end, 10);
  if (p.empty() || *end != '\0' || v < 0 || v > 65535) return Status::Invalid("--listen port \"" + p + "\" is not 0..65535");
  *port = static_cast<uint16_t>(v);
  return Status::Ok();
}

// Fills what the command line left out of the server, token and device
// from the project's section of the config file and $TIDEFS_TOKEN. A
// section's token belongs to its server: it is used (before the
// environment's) when that is the server in use, and never sent to
// another. `token_source` says where the token came from, for errors.
Status ResolveClient(ClientOptions* co, std::string* device, const std::string& token_flag,
                     const std::string& config_flag, std::string* token_source) {
  co->token = token_flag;
  *token_source = "--token";
  // With both on the command line, a default config file is not read (its
  // mistakes cannot stop a command that does not need it).
  const bool need = !config_flag.empty() || co->server.empty() || co->token.empty();
  const std::string path = !need ? "" : config_flag.empty() ? DefaultConfigPath() : config_flag;
  ASSIGN_OR_RETURN(Config config, LoadConfig(path, !config_flag.empty()));
  const auto it = config.find(co->project);
  const ProjectConfig* p = it == config.end() ? nullptr : &it->second;
  const std::string where = "[" + co->project + "] in " + path;
  if (co->server.empty() && p) co->server = p->server;
  if (co->server.empty())
    return Status::Invalid("no server: pass --server URL" +
                           (path.empty() ? std::string() : ", or set server = URL under " + where));
  const bool section_server = p && !p->server.empty() && SameServer(p->server, co->server);
  if (device && device->empty() && section_server) *device = p->device;
  if (co->token.empty() && section_server && !p->token.empty()) {
    co->token = p->token;
    *token_source = "token under " + where;
  }
  if (co->token.empty())
    if (const char* env = std::getenv("TIDEFS_TOKEN"); env && *env) {
      co->token = env;
      *token_source = "$TIDEFS_TOKEN";
    }
  if (co->token.empty()) {
    if (p && !p->token.empty())
      return Status::Invalid("no token for " + co->server + ": the token under " + where + " is for " + p->server +
                             "; pass --token or set TIDEFS_TOKEN");
    return Status::Invalid("no token: pass --token, set TIDEFS_TOKEN" +
                           (path.empty() ? std::string() : ", or set token = T under " + where));
  }
  return Status::Ok();
}

// An answer the server refused names where the token came from.
Status WithTokenSource(Status st, const std::string& source) {
  if (st.code() != Code::kUnauthenticated) return st;
  return Status(st.code(), st.message() + " (the token came from " + source + ")");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tidefs: mount a remote project as an ordinary folder"};
  app.require_subcommand(1);
  app.fallthrough();  // -v works after the subcommand too
  int verbosity = 0;
  app.add_flag("-v,--verbose", verbosity, "More log output (repeat for more)");

  // serve
  auto* serve = app.add_subcommand("serve", "Run a tidefs server");
  ServeOptions so;
  std::string listen = "127.0.0.1:7750";
  serve->add_option("--data", so.data_dir, "Data directory (metadata and packs)")->required();
  serve->add_option("--listen", listen, "HOST:PORT to listen on (port 0 picks one)");
  serve->add_option("--threads", so.threads, "Server threads")->check(CLI::Range(1, 256));
  serve->add_option("--ready-file", so.ready_file, "Write the server URL here once listening");
  int64_t block_grace = 86400, collect_every = 3600;
  serve->add_option("--block-grace", block_grace,
                    "Seconds an uploaded block no commit names is kept (an interrupted upload resumes within it; "
                    "default 86400)")
      ->check(CLI::Range(int64_t{1}, int64_t{365} * 86400));
  serve->add_option("--collect-every", collect_every, "Seconds between rounds of collecting such blocks (default 3600)")
      ->check(CLI::Range(int64_t{1}, int64_t{86400}));

  // admin
  auto* admin = app.add_subcommand("admin", "Manage projects and tokens in a data directory");
  std::string admin_data;
  admin->add_option("--data", admin_data, "Data directory")->required();
  admin->require_subcommand(1);
  auto* project = admin->add_subcommand("project", "Projects");
  project->require_subcommand(1);
  std::string project_name;
  auto* project_create = project->add_subcommand("create", "Create a project");
  project_create->add_option("name", project_name, "Project name")->required();
  auto* project_list = project->add_subcommand("list", "List projects");
  auto* token = admin->add_subcommand("token", "Tokens");
  token->require_subcommand(1);
  std::string tok_project, tok_device, tok_value;
  bool read_only = false;
  auto* token_create = token->add_subcommand("create", "Create a token (printed once, on the last line)");
  token_create->add_option("--project", tok_project)->required();
  token_create->add_option("--device", tok_device)->required();
  token_create->add_flag("--read-only", read_only, "The token may only read");
  auto* token_revoke = token->add_subcommand("revoke", "Revoke a token, or every token of a device");
  token_revoke->add_option("--project", tok_project);
  token_revoke->add_option("--device", tok_device);
  token_revoke->add_option("--token", tok_value);
  auto* device = admin->add_subcommand("device", "Devices");
  device->require_subcommand(1);
  auto* device_retire = device->add_subcommand(
      "retire", "A device that will not come back: its checkpoint stops holding deleted entries on the server");
  device_retire->add_option("--project", tok_project)->required();
  device_retire->add_option("--device", tok_device)->required();

  // import
  auto* import = app.add_subcommand("import", "Upload a local tree into a project");
  ClientOptions co;
  ImportOptions io;
  std::string import_token;
  std::string import_config;
  import->add_option("--server", co.server, "Server URL, e.g. http://127.0.0.1:7750 (default: from the config file)");
  import->add_option("--project", co.project, "Project name")->required();
  import->add_option("--token", import_token, "Token (default: $TIDEFS_TOKEN, then the config file)");
  import->add_option("--config", import_config, "Config file (default ~/.config/tidefs/config)");
  import->add_option("--parallel", io.parallel, "Uploads in flight")->check(CLI::Range(1, 64));
  import->add_option("src", io.src_dir, "Local directory to upload")->required();
  import->add_option("dest", io.dest, "Path inside the project (default /)");

  // mount / unmount
  auto* mount = app.add_subcommand("mount", "Mount a project as a folder");
  MountOptions mo;
  std::string mount_token;
  std::string mount_config;
  mount->add_option("--server", mo.client.server, "Server URL (default: from the config file)");
  mount->add_option("--project", mo.client.project, "Project name")->required();
  mount->add_option("--token", mount_token, "Token (default: $TIDEFS_TOKEN, then the config file)");
  mount->add_option("--device", mo.device, "This device's name (default: from the config file, else the host name)");
  mount->add_option("--config", mount_config, "Config file (default ~/.config/tidefs/config)");
  mount->add_option("--cache-dir", mo.cache_dir, "Cache directory (default ~/.cache/tidefs/PROJECT)");
  std::string cache_size = "10G";
  mount->add_option("--cache-size", cache_size, "Cache limit, e.g. 10G, 512M (default 10G)");
  mount->add_option("--retry-for", mo.retry_seconds,
                    "Seconds a read of uncached bytes keeps trying an unreachable or silent server before it fails (default 10)")
      ->check(CLI::Range(0.0, 86400.0));
  mount->add_option("--send-patience", mo.send_patience_seconds,
                    "At unmount, seconds without progress before giving up on an unreachable server (the rest "
                    "stays in the cache dir for the next mount; default 15)")
      ->check(CLI::Range(0.0, 86400.0));
  bool no_send_ahead = false;
  mount->add_flag("--no-send-ahead", no_send_ahead,
                  "Send a file only once it is closed or idle, not what the writing of a large file has left behind "
                  "while it is still open (a file rewritten in place then crosses the link once)");
  mount->add_flag("-f,--foreground", mo.foreground, "Stay in the foreground");
  mount->add_option("mountpoint", mo.mountpoint, "An empty directory")->required()->check(CLI::ExistingDirectory);
  auto* status = app.add_subcommand("status", "Show a mount's connection, journal, transfers and counters");
  std::string status_point;
  status->add_option("mountpoint", status_point)->required();
  bool status_json = false;
  status->add_flag("--json", status_json, "Print every counter as JSON");
  auto* sync = app.add_subcommand("sync", "Wait until every change made in a mount is on the server");
  std::string sync_point;
  double sync_timeout = 0;
  sync->add_option("mountpoint", sync_point)->required();
  sync->add_option("--timeout", sync_timeout, "Give up after this many seconds (exit status 1; default: wait)")
      ->check(CLI::Range(0.0, 31536000.0));
  auto* unmount = app.add_subcommand("unmount", "Unmount a tidefs folder");
  std::string unmount_point;
  unmount->add_option("mountpoint", unmount_point)->required();

  CLI11_PARSE(app, argc, argv);
  SetupLogging(verbosity);

  if (*serve) {
    if (Status st = ParseListen(listen, &so.host, &so.port); !st.ok()) return Fail(st);
    so.block_grace = std::chrono::seconds(block_grace);
    so.collect_every = std::chrono::seconds(collect_every);
    if (Status st = Serve(so); !st.ok()) return Fail(st);
    return 0;
  }
  if (*admin) {
    auto store = OpenDataDir(admin_data);
    if (!store.ok()) return Fail(store.status());
    if (*project_create) {
      auto p = (*store)->CreateProject(project_name);
      if (!p.ok()) return Fail(p.status());
      printf("created project %s\n", p->name.c_str());
    } else if (*project_list) {
      auto ps = (*store)->ListProjects();
      if (!ps.ok()) return Fail(ps.status());
      for (const auto& p : *ps) printf("%s\tseq=%llu\n", p.name.c_str(), static_cast<unsigned long long>(p.seq));
    } else if (*token_create) {
      auto t = CreateToken(store->get(), tok_project, tok_device, read_only);
      if (!t.ok()) return Fail(t.status());
      printf("token for device %s of project %s%s (shown once; keep it secret):\n%s\n", tok_device.c_str(),
             tok_project.c_str(), read_only ? ", read-only" : "", t->c_str());
    } else if (*token_revoke) {
      Result<int> n = 0;
      if (!tok_value.empty()) {
        n = (*store)->RevokeToken(HashToken(tok_value));
      } else if (!tok_project.empty() && !tok_device.empty()) {
        auto p = (*store)->GetProject(tok_project);
        if (!p.ok()) return Fail(p.status());
        n = (*store)->RevokeDeviceTokens(p->id, tok_device);
      } else {
        return Fail(Status::Invalid("token revoke needs --token T, or --project P --device D"));
      }
      if (!n.ok()) return Fail(n.status());
      printf("revoked %d token(s)\n", *n);
      if (*n == 0) return 1;
    } else if (*device_retire) {
      auto p = (*store)->GetProject(tok_project);
      if (!p.ok()) return Fail(p.status());
      auto known = (*store)->RetireDevice(p->id, tok_device);
      if (!known.ok()) return Fail(known.status());
      if (!*known) return Fail(Status::NotFound("project " + tok_project + " has no device " + tok_device));
      printf("retired device %s of project %s\n", tok_device.c_str(), tok_project.c_str());
    }
    return 0;
  }
  if (*mount) {
    auto size = ParseSize(cache_size);
    if (!size.ok()) return Fail(Status::Invalid("--cache-size: " + size.status().message()));
    mo.cache_bytes = *size;
    std::string token_source;
    if (Status st = ResolveClient(&mo.client, &mo.device, mount_token, mount_config, &token_source); !st.ok())
      return Fail(st);
    if (!mo.foreground) {
      // Return once the tree is visible; the child serves in the background.
      int fds[2];
      if (pipe(fds) != 0) return Fail(Status::IoError("pipe failed"));
      pid_t pid = fork();
      if (pid < 0) return Fail(Status::IoError("fork failed"));
      if (pid > 0) {
        close(fds[1]);
        char ok = 0;
        ssize_t n = read(fds[0], &ok, 1);
        if (n == 1 && ok == 1) return 0;
        int status = 0;
        waitpid(pid, &status, 0);
        return WIFEXITED(status) && WEXITSTATUS(status) != 0 ? WEXITSTATUS(status) : 1;
      }
      close(fds[0]);
      setsid();
      if (mo.cache_dir.empty()) mo.cache_dir = DefaultCacheDir(mo.client.project);
      const int ready_fd = fds[1];
      const std::string log_path = mo.cache_dir + "/mount.log";
      // Errors before the tree is visible still reach the caller's stderr;
      // after that the daemon keeps no pipe or terminal of its caller open
      // and logs to mount.log in the cache dir.
      mo.on_ready = [ready_fd, log_path] {
        int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (devnull >= 0) dup2(devnull, STDIN_FILENO);
        if (log >= 0) {
          dup2(log, STDOUT_FILENO);
          dup2(log, STDERR_FILENO);
        }
        char ok = 1;
        (void)!write(ready_fd, &ok, 1);
        close(ready_fd);
      };
    }
    // Every cache file open costs a descriptor: take all the system allows.
    if (struct rlimit rl{}; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    mo.send_ahead = !no_send_ahead;
    if (Status st = RunMount(mo); !st.ok()) return Fail(WithTokenSource(st, token_source));
    return 0;
  }
  if (*status) {
    auto out = MountStatus(status_point);
    if (!out.ok()) return Fail(out.status());
    fputs(status_json ? out->c_str() : FormatStatus(*out).c_str(), stdout);
    return 0;
  }
  if (*sync) {
    if (Status st = WaitSynced(sync_point, sync_timeout, isatty(STDERR_FILENO)); !st.ok()) return Fail(st);
    return 0;
  }
  if (*unmount) {
    if (Status st = Unmount(unmount_point); !st.ok()) return Fail(st);
    return 0;
  }
  if (*import) {
    std::string token_source;
    if (Status st = ResolveClient(&co, nullptr, import_token, import_config, &token_source); !st.ok()) return Fail(st);
    io.progress = isatty(STDERR_FILENO);
    ApiClient client(co);
    ImportStats stats;
    if (Status st = Import(&client, io, &stats); !st.ok()) return Fail(WithTokenSource(st, token_source));
    printf("imported %llu files, %llu dirs, %llu symlinks (%llu unchanged); %.1f MB read, %llu blocks (%.1f MB) sent in %llu commits\n",
           (unsigned long long)stats.files, (unsigned long long)stats.dirs, (unsigned long long)stats.symlinks,
           (unsigned long long)stats.unchanged, stats.bytes / 1e6, (unsigned long long)stats.blocks_sent,
           stats.bytes_sent / 1e6, (unsigned long long)stats.commits);
    return 0;
  }
  return 0;
}
