#include "core/config_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/fd.h"

namespace tidefs {
namespace {

constexpr size_t kMaxConfigBytes = 1 << 20;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Input echoed in an error: short, so a mistyped line cannot spill a secret.
std::string Shown(std::string_view s) { return s.size() <= 40 ? std::string(s) : std::string(s.substr(0, 40)) + "..."; }

// No control characters (a tab separates, as a space does).
bool Printable(std::string_view s) {
  for (unsigned char c : s)
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  return true;
}

}  // namespace

Result<Config> ParseConfig(std::string_view text, const std::string& where) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // a UTF-8 byte order mark
  Config out;
  ProjectConfig* section = nullptr;
  std::string section_name;
  size_t section_line = 0;
  // A token is only ever sent to the server its section names.
  auto token_needs_server = [&]() -> Status {
    if (section && !section->token.empty() && section->server.empty())
      return Status::Invalid(where + " line " + std::to_string(section_line) + ": [" + section_name +
                             "] has a token but no server = URL; a token is only sent to the server its section names");
    return Status::Ok();
  };
  size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const size_t nl = text.find('\n');
    std::string_view line = Trim(text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    const std::string at = where + " line " + std::to_string(line_no);
    if (line.empty() || line.front() == '#' || line.front() == ';') continue;
    if (!Printable(line)) return Status::Invalid(at + ": control characters are not allowed");
    if (line.front() == '[') {
      if (line.back() != ']')
        return Status::Invalid(at + ": a section is [project name] alone on its line (comments go on lines of their own)");
      const std::string_view name = Trim(line.substr(1, line.size() - 2));
      if (name.empty()) return Status::Invalid(at + ": the section [] names no project");
      if (name.find('\t') != std::string_view::npos) return Status::Invalid(at + ": a project name holds no tab");
      RETURN_IF_ERROR(token_needs_server());
      auto [it, fresh] = out.try_emplace(std::string(name));
      if (!fresh) return Status::Invalid(at + ": project [" + Shown(name) + "] appears twice");
      section = &it->second;
      section_name = std::string(name);
      section_line = line_no;
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos)
      return Status::Invalid(at + ": expected [project], key = value, or a # comment");
    if (!section)
      return Status::Invalid(at + ": \"" + Shown(Trim(line.substr(0, eq))) + "\" comes before any [project] section");
    const std::string_view key = Trim(line.substr(0, eq)), value = Trim(line.substr(eq + 1));
    std::string* slot = key == "server" ? &section->server
                        : key == "token" ? &section->token
                        : key == "device" ? &section->device
                                          : nullptr;
    if (!slot) return Status::Invalid(at + ": unknown key \"" + Shown(key) + "\" (known: server, token, device)");
    if (value.empty()) return Status::Invalid(at + ": " + std::string(key) + " has no value");
    if (value.find_first_of(" \t\"'#;") != std::string_view::npos)
      return Status::Invalid(at + ": " + std::string(key) +
                             " holds a space, a quote, # or ; (values are written bare, comments go on lines of their own)");
    if (!slot->empty())
      return Status::Invalid(at + ": " + std::string(key) + " is set twice in [" + Shown(section_name) + "]");
    *slot = std::string(value);
  }
  RETURN_IF_ERROR(token_needs_server());
  return out;
}

std::string DefaultConfigPath() {
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x && *x == '/') return std::string(x) + "/tidefs/config";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.config/tidefs/config";
  return "";
}

Result<Config> LoadConfig(const std::string& path, bool must_exist) {
  if (path.empty() || path == "/dev/null") return Config{};  // (as ssh -F /dev/null: no config)
  // O_NONBLOCK: a FIFO in its place must not hang the command.
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (fd.get() < 0) {
    if (errno == ENOENT && !must_exist) return Config{};
    return Status::Invalid("cannot read the config file " + path + ": " + std::strerror(errno));
  }
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0) return Status::Invalid("cannot stat the config file " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return Status::Invalid("the config file " + path + " is not a regular file");
  // It says where tokens go: only its owner (or root) may write it, as ssh
  // requires of its own config.
  if (st.st_uid != ::geteuid() && st.st_uid != 0)
    return Status::Denied("the config file " + path + " belongs to another user (uid " + std::to_string(st.st_uid) +
                          "); use a file of your own");
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return Status::Denied("the config file " + path + " may be changed by others; run: chmod go-w " + path);
  if (static_cast<uint64_t>(st.st_size) > kMaxConfigBytes)
    return Status::Invalid("the config file " + path + " is over 1 MiB; it holds a few lines per project");
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::Invalid("cannot read the config file " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  text.resize(got);
  ASSIGN_OR_RETURN(Config config, ParseConfig(text, path));
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    for (const auto& [name, p] : config)
      if (!p.token.empty())
        return Status::Denied("the config file " + path + " holds a token and others may read it; run: chmod 600 " +
                              path);
  }
  return config;
}

bool SameServer(std::string_view a, std::string_view b) {
  while (!a.empty() && a.back() == '/') a.remove_suffix(1);
  while (!b.empty() && b.back() == '/') b.remove_suffix(1);
  return a == b;
}

}  // namespace tidefs
