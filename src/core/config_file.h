// The user's config file: where `tidefs mount` and `tidefs import` find a
// project's server, token and device name when the command line and the
// environment do not give them (README.md, "Mount a project").
//
//   # ~/.config/tidefs/config  (chmod 600: it holds tokens)
//   [demo]
//   server = http://127.0.0.1:7750
//   token = tdf_...
//   device = laptop
//
// One section per project name. Blank lines and lines starting with '#'
// or ';' are ignored; anything else that is not `[name]` or `key = value`
// inside a section is an error naming the line.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "core/status.h"

namespace tidefs {

struct ProjectConfig {
  std::string server;  // empty: not set
  std::string token;
  std::string device;
};

using Config = std::map<std::string, ProjectConfig, std::less<>>;

// Parses a config file's text; `where` names the file in errors.
Result<Config> ParseConfig(std::string_view text, const std::string& where);

// $XDG_CONFIG_HOME/tidefs/config, else $HOME/.config/tidefs/config; empty
// when neither variable is set.
std::string DefaultConfigPath();

// Reads and parses `path`. A missing file is an empty config unless
// `must_exist`. A file that holds a token and that others may read is
// refused (as ssh refuses such a key), saying how to fix it.
Result<Config> LoadConfig(const std::string& path, bool must_exist);

// Whether a section's `server` names `url` (trailing slashes aside).
bool SameServer(std::string_view a, std::string_view b);

}  // namespace tidefs
