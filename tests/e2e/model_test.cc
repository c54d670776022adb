// End to end, at random: a long run of file and folder operations on a
// real mount, each also done on a local folder (the model). After every
// operation both must agree (the same success or errno), every so often
// the whole trees must, and at the end a fresh mount of the server's copy
// must hold exactly the model. A second run kills the mount (-9) at random
// points and starts it again from its cache dir: nothing a returned
// syscall did may be lost; a third also has the server refuse uploads and
// commits (or cut their answers) for a while now and then. A failure prints the seed and the last
// operations; TIDEFS_MODEL_SEED=N runs one seed again, and
// TIDEFS_MODEL_TRACE=1 prints every operation and its result as it runs.
// Another run has several models at once, each in its own folder of one
// mount, from as many threads.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "../integration/helpers.h"
#include "../integration/test_server.h"
#include "e2e_helpers.h"

namespace tidefs {
namespace {

namespace fs = std::filesystem;

// The last operations of a random run, for a failure's message.
class Recent {
 public:
  explicit Recent(size_t keep) : keep_(keep) {}
  void Note(const std::string& what) {
    lines_.push_back(what);
    if (lines_.size() > keep_) lines_.pop_front();
  }
  std::string Text() const {
    std::string out = "last operations:\n";
    for (const auto& l : lines_) out += "  " + l + "\n";
    return out;
  }

 private:
  size_t keep_;
  std::deque<std::string> lines_;
};

// A file's bytes; a read that fails (EIO) fails the test, naming the file
// (the stream's exception does not).
std::string ReadOrFail(const std::string& path) {
  try {
    return ReadAll(path);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "reading " << path << " failed: " << e.what() << " (" << strerror(errno) << ")";
    return "<read failed>";
  }
}

// What a tree holds, as comparable text: one line per node, sorted (type,
// mode, size, and a hash of a file's bytes).
std::string Describe(const std::string& root) {
  std::vector<std::string> lines;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    const std::string rel = it->path().string().substr(root.size());
    struct stat st;
    if (lstat(it->path().c_str(), &st) != 0) {
      lines.push_back(rel + " lstat failed: " + strerror(errno));
      continue;
    }
    std::ostringstream line;
    line << rel;
    if (!S_ISLNK(st.st_mode)) line << " " << std::oct << (st.st_mode & 07777) << std::dec;
    if (S_ISDIR(st.st_mode)) {
      line << " dir";
    } else if (S_ISREG(st.st_mode)) {
      const std::string bytes = ReadOrFail(it->path());
      line << " file " << st.st_size << " read " << bytes.size() << " hash " << std::hash<std::string>{}(bytes);
    } else if (S_ISLNK(st.st_mode)) {
      std::error_code ec;
      line << " link " << fs::read_symlink(it->path(), ec).string();
    } else {
      line << " other";
    }
    lines.push_back(line.str());
  }
  std::sort(lines.begin(), lines.end());
  std::string out;
  for (auto& l : lines) out += l + "\n";
  return out;
}

// Where two Describe() texts differ, as the lines only one of them has:
// short enough to survive a CI log's cut, which keeps only a failure's
// head and tail.
std::string TreeDiff(const std::string& a_text, const std::string& b_text, const std::string& a_name = "the mount",
                     const std::string& b_name = "the model") {
  auto lines = [](const std::string& text) {
    std::set<std::string> out;
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);) out.insert(l);
    return out;
  };
  const auto a = lines(a_text), b = lines(b_text);
  std::string out = "the trees differ:\n";
  for (const auto& l : a)
    if (!b.count(l)) out += "  only " + a_name + ": " + l + "\n";
  for (const auto& l : b)
    if (!a.count(l)) out += "  only " + b_name + ": " + l + "\n";
  return out;
}

// A file written whole through one descriptor (`flags`: O_CREAT, O_TRUNC,
// O_APPEND...); 0 or the errno.
int WriteWhole(const std::string& path, const std::string& data, int flags) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | flags, 0644);
  if (fd < 0) return errno;
  int r = 0;
  if (!data.empty() && ::write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) r = errno ? errno : EIO;
  if (::close(fd) != 0 && !r) r = errno;
  return r;
}

// `data` written at `off` of an existing file; 0 or the errno.
int PWrite(const std::string& path, const std::string& data, off_t off) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  int r = 0;
  if (!data.empty() && ::pwrite(fd, data.data(), data.size(), off) != static_cast<ssize_t>(data.size())) r = errno ? errno : EIO;
  if (::close(fd) != 0 && !r) r = errno;
  return r;
}

class Model {
 public:
  // `label`: a prefix for its trace lines (which thread).
  Model(uint64_t seed, std::string ref, std::string label = "")
      : rng_(seed), ref_(std::move(ref)), label_(std::move(label)) {}

  // One random operation on both trees; false (with the test failed) when
  // they disagreed.
  bool Step(const std::string& mnt) {
    std::ostringstream what;
    int a = 0, b = 0;  // results: 0, or errno
    auto both = [&](const std::function<int(const std::string& root)>& op) {
      a = op(ref_);
      b = op(mnt);
    };
    const std::string p = Path(), q = Path();
    switch (Pick({8, 6, 3, 3, 4, 3, 3, 2, 2, 3, 2, 2, 2, 2, 2, 2, 2})) {
      case 0: {  // a file written anew
        const std::string data = Bytes();
        what << "write " << p << " " << data.size() << " bytes";
        both([&](const std::string& root) { return WriteWhole(root + p, data, O_CREAT | O_TRUNC); });
        break;
      }
      case 1: {  // bytes written into a file, maybe past its end
        const off_t off = static_cast<off_t>(Size() % (1 << 21));
        const std::string data = Bytes();
        what << "pwrite " << p << " at " << off << " " << data.size() << " bytes";
        both([&](const std::string& root) { return PWrite(root + p, data, off); });
        break;
      }
      case 2: {
        const off_t size = static_cast<off_t>(Size() % (1 << 21));
        what << "truncate " << p << " to " << size;
        both([&](const std::string& root) { return ::truncate((root + p).c_str(), size) == 0 ? 0 : errno; });
        break;
      }
      case 3: {
        const std::string data = Bytes();
        what << "append " << data.size() << " bytes to " << p;
        both([&](const std::string& root) { return WriteWhole(root + p, data, O_APPEND); });
        break;
      }
      case 4: {  // files and folders, over what is there or not
        const std::string from = Pick({1, 1}) ? DirPath() : p;
        what << "rename " << from << " to " << q;
        both([&](const std::string& root) {
          return ::rename((root + from).c_str(), (root + q).c_str()) == 0 ? 0 : errno;
        });
        break;
      }
      case 5:
        what << "unlink " << p;
        both([&](const std::string& root) { return ::unlink((root + p).c_str()) == 0 ? 0 : errno; });
        break;
      case 6: {
        const std::string d = DirPath();
        what << "mkdir " << d;
        both([&](const std::string& root) { return ::mkdir((root + d).c_str(), 0755) == 0 ? 0 : errno; });
        break;
      }
      case 7: {
        const std::string d = DirPath();
        what << "rmdir " << d;
        both([&](const std::string& root) { return ::rmdir((root + d).c_str()) == 0 ? 0 : errno; });
        break;
      }
      case 8: {
        const mode_t mode = std::vector<mode_t>{0600, 0644, 0755, 0640}[Size() % 4];
        what << "chmod " << p << " " << std::oct << mode;
        both([&](const std::string& root) { return ::chmod((root + p).c_str(), mode) == 0 ? 0 : errno; });
        break;
      }
      case 9: {  // read back
        what << "read " << p;
        const std::string x = ReadOrError(ref_ + p), y = ReadOrError(mnt + p);
        if (x != y) {
          ADD_FAILURE() << what.str() << ": the mount read " << y.size() << " bytes, the model " << x.size()
                        << "\n" << History();
          return false;
        }
        break;
      }
      case 10:
        what << "fsync " << p;
        both([&](const std::string& root) {
          int fd = ::open((root + p).c_str(), O_RDWR | O_CLOEXEC);
          if (fd < 0) return errno;
          int r = ::fsync(fd) == 0 ? 0 : errno;
          ::close(fd);
          return r;
        });
        break;
      case 11: {  // written through a shared mapping
        const uint64_t salt = Size();
        what << "mmap-write " << p << " salt " << salt;
        both([&](const std::string& root) { return MapWrite(root + p, salt); });
        break;
      }
      case 12: {  // a symbolic link (its target need not exist)
        // (Inside the tree wherever the link is: never "..".)
        const std::string target = (Pick({1, 1}) ? "f" : "c/f") + std::to_string(Size() % 5);
        what << "symlink " << p << " -> " << target;
        both([&](const std::string& root) { return ::symlink(target.c_str(), (root + p).c_str()) == 0 ? 0 : errno; });
        break;
      }
      case 13: {  // swapped, or moved only where nothing is
        const unsigned flags = Pick({1, 1}) ? RENAME_EXCHANGE : RENAME_NOREPLACE;
        what << (flags == RENAME_EXCHANGE ? "exchange " : "rename-noreplace ") << p << " " << q;
        both([&](const std::string& root) {
          return ::renameat2(AT_FDCWD, (root + p).c_str(), AT_FDCWD, (root + q).c_str(), flags) == 0 ? 0 : errno;
        });
        break;
      }
      case 14: {  // a new file that must not exist yet
        const std::string data = Bytes();
        what << "create-excl " << p << " " << data.size() << " bytes";
        both([&](const std::string& root) { return WriteWhole(root + p, data, O_CREAT | O_EXCL); });
        break;
      }
      case 15: {  // unlinked while open: still written and read through the descriptor
        const std::string data = Bytes();
        const off_t off = static_cast<off_t>(Size() % (1 << 20));
        what << "unlink-while-open " << p << " pwrite at " << off << " " << data.size() << " bytes";
        std::string x, y;
        a = UnlinkWhileOpen(ref_ + p, data, off, &x);
        b = UnlinkWhileOpen(mnt + p, data, off, &y);
        if (a == 0 && b == 0 && x != y) {
          size_t at = 0;
          while (at < x.size() && at < y.size() && x[at] == y[at]) ++at;
          size_t upto = at;
          while (upto < x.size() && upto < y.size() && x[upto] != y[upto]) ++upto;
          ADD_FAILURE() << what.str() << ": read back " << y.size() << " bytes, the model " << x.size()
                        << "; they differ from byte " << at << " to " << upto << "\n" << History();
          return false;
        }
        break;
      }
      case 16: {  // cut through a descriptor that also writes
        const off_t size = static_cast<off_t>(Size() % (1 << 21));
        const std::string data = Bytes();
        what << "ftruncate " << p << " to " << size << " then write " << data.size() << " bytes at 0";
        both([&](const std::string& root) {
          int fd = ::open((root + p).c_str(), O_RDWR | O_CLOEXEC);
          if (fd < 0) return errno;
          int r = ::ftruncate(fd, size) == 0 ? 0 : errno;
          if (!r && !data.empty() && ::pwrite(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size()))
            r = errno ? errno : EIO;
          if (::close(fd) != 0 && !r) r = errno;
          return r;
        });
        break;
      }
    }
    recent_.Note(what.str() + " -> " + (a ? strerror(a) : "ok"));
    if (std::getenv("TIDEFS_MODEL_TRACE")) std::fprintf(stderr, "TRACE %s%s -> %s\n", label_.c_str(), what.str().c_str(), a ? strerror(a) : "ok");
    if (a != b) {
      ADD_FAILURE() << what.str() << ": the model says " << (a ? strerror(a) : "ok") << ", the mount "
                    << (b ? strerror(b) : "ok") << "\n" << History();
      return false;
    }
    return true;
  }

  void Note(const std::string& what) { recent_.Note(what); }
  std::string History() const { return recent_.Text(); }

 private:
  size_t Pick(std::vector<int> weights) {
    std::discrete_distribution<size_t> d(weights.begin(), weights.end());
    return d(rng_);
  }
  uint64_t Size() { return rng_(); }
  // A few names in a few folders: operations run into one another.
  std::string DirPath() {
    static const std::vector<std::string> dirs = {"/a", "/b", "/a/c", "/b/d", "/a/c/e"};
    return dirs[rng_() % dirs.size()];
  }
  std::string Path() {
    static const std::vector<std::string> dirs = {"", "", "/a", "/b", "/a/c"};
    return dirs[rng_() % dirs.size()] + "/f" + std::to_string(rng_() % 5);
  }
  std::string Bytes() {
    static const std::vector<size_t> sizes = {0, 1, 100, 4095, 65535, 65536, 65537, 200000, (1 << 20) + 7};
    const size_t n = sizes[rng_() % sizes.size()];
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng_());
    return s;
  }
  // Flips up to 64 bytes of an existing non-empty file through MAP_SHARED.
  static int MapWrite(const std::string& path, uint64_t salt) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return errno;
    struct stat st;
    if (::fstat(fd, &st) != 0 || st.st_size == 0) {
      ::close(fd);
      return st.st_size == 0 ? 0 : errno;
    }
    void* m = ::mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      int r = errno;
      ::close(fd);
      return r;
    }
    auto* bytes = static_cast<unsigned char*>(m);
    for (int i = 0; i < 64; ++i) bytes[(salt + i * 4099) % st.st_size] ^= static_cast<unsigned char>(salt >> (i % 56));
    int r = ::msync(m, st.st_size, MS_SYNC) == 0 ? 0 : errno;
    ::munmap(m, st.st_size);
    ::close(fd);
    return r;
  }
  // Opens, unlinks, writes through the descriptor, reads it all back.
  static int UnlinkWhileOpen(const std::string& path, const std::string& data, off_t off, std::string* back) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return errno;
    int r = ::unlink(path.c_str()) == 0 ? 0 : errno;
    if (!r && !data.empty() && ::pwrite(fd, data.data(), data.size(), off) != static_cast<ssize_t>(data.size()))
      r = errno ? errno : EIO;
    struct stat st;
    if (!r && ::fstat(fd, &st) == 0) {
      back->resize(static_cast<size_t>(st.st_size));
      ssize_t n = ::pread(fd, back->data(), back->size(), 0);
      if (n != static_cast<ssize_t>(back->size())) r = n < 0 ? errno : EIO;
    }
    if (::close(fd) != 0 && !r) r = errno;
    return r;
  }
  static std::string ReadOrError(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::string("error ") + strerror(errno);
    struct stat st;
    const bool dir = ::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    ::close(fd);
    return dir ? "a directory" : ReadOrFail(path);
  }

  std::mt19937_64 rng_;
  std::string ref_, label_;
  Recent recent_{60};
};

uint64_t Seed(uint64_t fallback) {
  const char* s = std::getenv("TIDEFS_MODEL_SEED");
  return s ? std::strtoull(s, nullptr, 10) : fallback;
}

// TIDEFS_MODEL_SCALE=N: N times the operations (longer runs for sweeps).
int Scaled(int n) {
  const char* s = std::getenv("TIDEFS_MODEL_SCALE");
  const long k = s ? std::strtol(s, nullptr, 10) : 1;
  return n * static_cast<int>(k > 0 && k < 1000 ? k : 1);
}

class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(access("/dev/fuse", R_OK | W_OK), 0) << "/dev/fuse is missing: end-to-end tests cannot run";
    dir_ = MakeTempDir("tidefs-e2e");
    ref_ = dir_ + "/ref";
    fs::create_directories(ref_);
  }
  void TearDown() override {
    // TIDEFS_MODEL_KEEP=1: a failed run's folders stay (the mount's log,
    // run with -vvv, is in m/cache/mount.log).
    if (HasFailure() && std::getenv("TIDEFS_MODEL_KEEP")) {
      std::fprintf(stderr, "kept %s\n", dir_.c_str());
      return;
    }
    fs::remove_all(dir_);
  }
  // `steps` random operations; with `kill_every` > 0, the mount is killed
  // and started again about that often. Then the server's copy is checked.
  // With `outages`, the mount reaches the server through a proxy that
  // now and then refuses its uploads or commits for a while.
  // `mount_flags`: more `tidefs mount` flags (a small --cache-size).
  void Run(uint64_t seed, int steps, int kill_every, bool outages = false, const std::string& mount_flags = "") {
    SCOPED_TRACE("seed " + std::to_string(seed) + " (TIDEFS_MODEL_SEED=" + std::to_string(seed) + " to run it again)");
    Model model(seed, ref_);
    std::mt19937_64 kills(seed ^ 0x5eed);
    std::optional<FaultProxy> proxy;
    if (outages) proxy.emplace(server_, dir_);
    const std::string url = outages ? proxy->url() : server_.url();
    const std::string flags = mount_flags + (std::getenv("TIDEFS_MODEL_KEEP") ? " -vvv" : "");
    std::optional<TestMount> m;
    m.emplace(url, server_.rw_token, dir_ + "/m", flags);
    steps = Scaled(steps);
    for (int i = 1; i <= steps; ++i) {
      if (!model.Step(m->path())) return;
      if (outages && kills() % 20 == 0) {
        static const std::vector<std::string> rules = {"pass", "refuse /commit 0 -1", "refuse /blocks 0 -1",
                                                       "cut /commit 10 1", "cut /blocks 100 1"};
        const std::string& rule = rules[kills() % rules.size()];
        model.Note("server: " + rule);
        proxy->SetRule(rule);
      }
      if (kill_every > 0 && kills() % kill_every == 0) {
        model.Note("kill -9 and restart");
        ASSERT_NO_FATAL_FAILURE(KillMount(m->path()));
        m.reset();
        m.emplace(url, server_.rw_token, dir_ + "/m", flags);
        ASSERT_NO_FATAL_FAILURE(SameTrees(m->path(), "after a kill -9 and a restart at step " + std::to_string(i), model.History()));
      }
      if (i % 50 == 0) {
        ASSERT_NO_FATAL_FAILURE(SameTrees(m->path(), "at step " + std::to_string(i), model.History()));
      }
    }
    ASSERT_NO_FATAL_FAILURE(SameTrees(m->path(), "at the end", model.History()));
    if (outages) proxy->SetRule("pass");
    ASSERT_TRUE(JournalEmptiesWithin(m->path(), std::chrono::seconds(30))) << StatusOf(m->path());
    if (mount_flags.find("--cache-size") != std::string::npos) {
      EXPECT_EQ(StatusOf(m->path()).find("\"chunks_evicted\": 0,"), std::string::npos) << "nothing was evicted";
      EXPECT_TRUE(Describe(m->path()) == Describe(ref_)) << "read again after the evictions";
    }
    m.reset();
    TestMount fresh(server_, server_.ro_token, dir_ + "/fresh");
    const std::string got = Describe(fresh.path()), want = Describe(ref_);
    EXPECT_TRUE(got == want) << "the server's copy differs from what was done\n" << model.History()
                             << TreeDiff(got, want, "the server");
  }
  // The mount's tree is the model's; else a fatal failure saying `when`,
  // the last operations and the difference (last: a CI log keeps the tail).
  void SameTrees(const std::string& mnt, const std::string& when, const std::string& history) {
    const std::string got = Describe(mnt), want = Describe(ref_);
    ASSERT_TRUE(got == want) << when << "\n" << history << TreeDiff(got, want);
  }
  // `threads` models at once, each in its own folder of one mount and on
  // its own thread (the mount's locks, batches and write-back under
  // concurrent callers), `steps` operations each per round; every
  // `kill_every` rounds the mount is killed (-9) and started again.
  void RunThreads(uint64_t seed, int threads, int rounds, int steps, int kill_every) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " (TIDEFS_MODEL_SEED=" + std::to_string(seed) + " to run it again)");
    const std::string flags = std::getenv("TIDEFS_MODEL_KEEP") ? " -vvv" : "";
    std::optional<TestMount> m;
    m.emplace(server_.url(), server_.rw_token, dir_ + "/m", flags);
    std::vector<std::unique_ptr<Model>> models;
    for (int t = 0; t < threads; ++t) {
      const std::string sub = "/t" + std::to_string(t);
      ASSERT_EQ(::mkdir((ref_ + sub).c_str(), 0755), 0);
      ASSERT_EQ(::mkdir((m->path() + sub).c_str(), 0755), 0);
      models.push_back(std::make_unique<Model>(seed * 31 + t, ref_ + sub, "[" + sub.substr(1) + "] "));
    }
    auto history = [&] {
      std::string h;
      for (int t = 0; t < threads; ++t) h += "thread " + std::to_string(t) + ":\n" + models[t]->History();
      return h;
    };
    std::mt19937_64 kills(seed ^ 0x5eed);
    const int phase = kill_every > 0 ? static_cast<int>(kills() % kill_every) : 0;
    int killed = 0;
    rounds = Scaled(rounds);
    for (int r = 1; r <= rounds; ++r) {
      std::atomic<bool> ok{true};
      std::vector<std::thread> running;
      for (int t = 0; t < threads; ++t)
        running.emplace_back([&, t] {
          const std::string root = m->path() + "/t" + std::to_string(t);
          for (int i = 0; i < steps && ok; ++i)
            if (!models[t]->Step(root)) ok = false;
        });
      for (auto& th : running) th.join();
      if (!ok) return;
      if (kill_every > 0 && (r + phase) % kill_every == 0) {
        for (auto& model : models) model->Note("kill -9 and restart");
        ASSERT_NO_FATAL_FAILURE(KillMount(m->path()));
        m.reset();
        m.emplace(server_.url(), server_.rw_token, dir_ + "/m", flags);
        ++killed;
        ASSERT_NO_FATAL_FAILURE(SameTrees(m->path(), "after a kill -9 and a restart after round " + std::to_string(r), history()));
      } else if (r % 5 == 0) {
        ASSERT_NO_FATAL_FAILURE(SameTrees(m->path(), "after round " + std::to_string(r), history()));
      }
    }
    ASSERT_NO_FATAL_FAILURE(SameTrees(m->path(), "at the end", history()));
    if (kill_every > 0) {
      EXPECT_GT(killed, 1) << "hardly a mount was killed: nothing was checked";
    }
    ASSERT_TRUE(JournalEmptiesWithin(m->path(), std::chrono::seconds(30))) << StatusOf(m->path());
    m.reset();
    TestMount fresh(server_, server_.ro_token, dir_ + "/fresh");
    const std::string got = Describe(fresh.path()), want = Describe(ref_);
    EXPECT_TRUE(got == want) << "the server's copy differs from what was done\n" << history()
                             << TreeDiff(got, want, "the server");
  }
  TestServer server_;
  std::string dir_, ref_;
};

TEST_F(ModelTest, RandomOperationsMatchALocalFolderAndTheServer) { Run(Seed(1), 400, 0); }

TEST_F(ModelTest, RandomOperationsSurviveKilledMounts) { Run(Seed(2), 200, 25); }

TEST_F(ModelTest, RandomOperationsSurviveServerOutagesAndKilledMounts) { Run(Seed(3), 200, 40, /*outages=*/true); }

// A cache smaller than what is written: what is committed is evicted and
// fetched again as it is read; local changes never are.
// Four threads at once, each on its own folder; the mount killed between
// rounds now and then.
TEST_F(ModelTest, RandomOperationsFromFourThreadsSurviveKilledMounts) { RunThreads(Seed(6), 4, 60, 10, 6); }

TEST_F(ModelTest, RandomOperationsWithASmallCache) { Run(Seed(5), 400, 0, /*outages=*/false, "--cache-size 4M"); }

// Another device watching: a second mount, read through its kernel's
// caches every 10 operations, shows exactly the model within seconds of
// the first mount's journal emptying (nothing stale left in its kernel).
TEST_F(ModelTest, AnotherMountSeesEveryChange) {
  const uint64_t seed = Seed(4);
  SCOPED_TRACE("seed " + std::to_string(seed) + " (TIDEFS_MODEL_SEED=" + std::to_string(seed) + " to run it again)");
  Model model(seed, ref_);
  TestMount m(server_, server_.rw_token, dir_ + "/m");
  TestMount other(server_, server_.ro_token, dir_ + "/other");
  std::string last;
  size_t checked = 0;  // nodes compared, over all rounds
  for (int i = 1; i <= 400; ++i) {
    if (!model.Step(m.path())) return;
    if (i % 10) continue;
    ASSERT_TRUE(JournalEmptiesWithin(m.path(), std::chrono::seconds(20))) << StatusOf(m.path());
    const std::string want = Describe(ref_);
    EXPECT_TRUE(Within(std::chrono::seconds(5), [&] { return (last = Describe(other.path())) == want; }))
        << "the other mount at step " << i << ":\n" << last << "the model:\n" << want << model.History();
    if (HasFailure()) return;
    checked += std::count(want.begin(), want.end(), '\n');
  }
  EXPECT_GT(checked, 100u) << "the model's trees were nearly empty: nothing was checked";
}


// Two devices changing the same files, at random, in rounds; after each
// round both go quiet and must show the same tree, then:
// - nothing written is lost: what a device wrote last to a file is in the
//   tree (as the file or a conflict copy) unless a later change of that
//   file was made on top of it (by a device that read those bytes there);
// - nothing is made up: every file but conflict copies holds bytes some
//   device read back from its own mount right after changing it.
// Every other round both devices are offline (their proxies refuse commits
// and changes) and reconnect at its end, so what each saw is known; the
// others are live, and only their convergence and bytes are checked (when
// a change from elsewhere lands between a look and a change is not known
// from outside). At the end a fresh mount shows the same tree too.
class TwoWriters {
 public:
  TwoWriters(uint64_t seed, std::array<std::string, 2> roots) : rng_(seed), roots_(std::move(roots)) {
    seen_.insert(std::hash<std::string>{}(std::string()));
  }

  // One random operation on device `d`; false (with the test failed) when
  // the mount gave an error a local folder would not.
  bool Step(int d) {
    const std::string& root = roots_[d];
    const std::string p = Path(), q = Path();
    std::ostringstream what;
    what << "device " << d << ": ";
    int r = 0;
    bool content = false;  // p's bytes change
    const size_t op = Pick({6, 5, 3, 3, 3, 2, 2});
    if (op == 4) {
      Replacing(d, q);
    } else if (op != 6) {
      Replacing(d, p);
    }
    const std::optional<size_t> before = HashOf(root + p);
    switch (op) {
      case 0: {
        const std::string data = Bytes();
        what << "write " << p << " " << data.size() << " bytes";
        r = WriteWhole(root + p, data, O_CREAT | O_TRUNC);
        content = true;
        if (r == 0) seen_.insert(std::hash<std::string>{}(data));
        break;
      }
      case 1: {
        const off_t off = static_cast<off_t>(rng_() % (1 << 21));
        const std::string data = Bytes();
        what << "pwrite " << p << " at " << off << " " << data.size() << " bytes";
        r = PWrite(root + p, data, off);
        content = true;
        break;
      }
      case 2: {
        const std::string data = Bytes();
        what << "append " << data.size() << " bytes to " << p;
        r = WriteWhole(root + p, data, O_APPEND);
        content = true;
        break;
      }
      case 3: {
        const off_t size = static_cast<off_t>(rng_() % (1 << 21));
        what << "truncate " << p << " to " << size;
        r = ::truncate((root + p).c_str(), size) == 0 ? 0 : errno;
        content = true;
        break;
      }
      case 4:
        what << "rename " << p << " to " << q;
        r = ::rename((root + p).c_str(), (root + q).c_str()) == 0 ? 0 : errno;
        break;
      case 5:
        what << "unlink " << p;
        r = ::unlink((root + p).c_str()) == 0 ? 0 : errno;
        break;
      case 6: {
        const mode_t mode = (rng_() % 2) ? 0600 : 0644;
        what << "chmod " << p << " " << std::oct << mode;
        r = ::chmod((root + p).c_str(), mode) == 0 ? 0 : errno;
        break;
      }
    }
    Note(what.str() + " -> " + (r ? strerror(r) : "ok"));
    // (ENOENT: the name is not there on this device, as on a local disk.)
    if (r != 0 && r != ENOENT) {
      ADD_FAILURE() << what.str() << ": " << strerror(r) << "\n" << History();
      return false;
    }
    if (r == 0 && content) {
      struct stat st;
      if (::lstat((root + p).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        // (Live: a change from elsewhere may have moved it right after: its
        // bytes are not known, and the next check cannot tell made-up ones.)
        if (!offline_) {
          unknown_ = true;
          return true;
        }
        ADD_FAILURE() << what.str() << ": the file is not there right after\n" << History();
        return false;
      }
      const size_t h = std::hash<std::string>{}(ReadOrFail(root + p));
      seen_.insert(h);
      // (Bytes that did not change are no change to keep: a write of
      // nothing, a cut to the same size.)
      if (offline_ && before != h) last_[st.st_ino] = {d, h, what.str()};
    }
    return true;
  }

  // Both devices are quiet and show `tree` (Describe's text; `root` one
  // of the mounts): checks what is said above.
  void Check(const std::string& root, const std::string& tree) {
    std::multiset<size_t> here;
    for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
      if (!it->is_regular_file()) continue;
      const std::string name = it->path().filename().string();
      const size_t h = std::hash<std::string>{}(ReadOrFail(it->path()));
      here.insert(h);
      EXPECT_TRUE(unknown_ || name.find("(conflict") != std::string::npos || seen_.count(h))
          << it->path().string().substr(root.size()) << " holds bytes no device read back after a change\n"
          << tree << History();
    }
    for (const auto& [ino, w] : last_)
      EXPECT_TRUE(here.count(w.hash)) << "lost: what device " << w.device << " wrote last to node " << ino << " ("
                                      << w.what << ") is nowhere in the tree\n"
                                      << tree << History();
    // (Checked once, at the end of their offline round: in a live round
    // what a device saw when it changed them is not known.)
    last_.clear();
    unknown_ = false;
  }
  // Offline rounds: what each device saw is known (see above).
  void SetOffline(bool offline) { offline_ = offline; }
  void Note(const std::string& what) { recent_.Note(what); }
  std::string History() const { return recent_.Text(); }

 private:
  struct Written {
    int device;
    size_t hash;
    std::string what;
  };
  // Device `d` is about to change or replace the file at `path` (as it
  // sees it): what another device wrote last there need not stay if `d`
  // reads those very bytes (its change is made on top of them); otherwise
  // the change is a conflict and those bytes must stay. Its own last
  // write goes (it changes it itself).
  void Replacing(int d, const std::string& path) {
    struct stat st;
    if (::lstat((roots_[d] + path).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return;
    auto it = last_.find(st.st_ino);
    if (it == last_.end()) return;
    if (it->second.device == d || std::hash<std::string>{}(ReadOrFail(roots_[d] + path)) == it->second.hash)
      last_.erase(it);
  }
  static std::optional<size_t> HashOf(const std::string& path) {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
    return std::hash<std::string>{}(ReadOrFail(path));
  }
  size_t Pick(std::vector<int> weights) {
    std::discrete_distribution<size_t> dist(weights.begin(), weights.end());
    return dist(rng_);
  }
  std::string Path() {
    static const std::vector<std::string> dirs = {"", "", "/a"};
    return dirs[rng_() % dirs.size()] + "/f" + std::to_string(rng_() % 4);
  }
  std::string Bytes() {
    static const std::vector<size_t> sizes = {0, 1, 100, 4095, 65536, 65537, 200000, (1 << 20) + 7};
    std::string s(sizes[rng_() % sizes.size()], '\0');
    for (auto& c : s) c = static_cast<char>(rng_());
    return s;
  }

  std::mt19937_64 rng_;
  std::array<std::string, 2> roots_;
  std::set<size_t> seen_;
  std::map<ino_t, Written> last_;
  Recent recent_{80};
  bool offline_ = false;
  bool unknown_ = false;  // bytes written this round that could not be read back
};

// Two devices change the same few names, offline and live in turn (see
// TwoWriters). With `kill_every` > 0, a device's mount is killed (-9) and
// started again about that often: offline too, with its changes in its
// journal only. With `faults`, now and then in live rounds a device's
// commit answers are lost (the server applied the commit) or its uploads
// refused or cut, and the server is killed (-9) and started again, with
// both mounts' commits and uploads possibly under way.
void RunTwo(TestServer& server, const std::string& dir, uint64_t seed, int kill_every, bool faults = false) {
  SCOPED_TRACE("seed " + std::to_string(seed) + " (TIDEFS_MODEL_SEED=" + std::to_string(seed) + " to run it again)");
  const std::string flags = std::getenv("TIDEFS_MODEL_KEEP") ? " -vvv" : "";
  fs::create_directories(dir + "/p1");
  fs::create_directories(dir + "/p2");
  FaultProxy p1(server, dir + "/p1"), p2(server, dir + "/p2");
  // (The token names the device, and so the conflict copies.)
  const std::array<std::string, 2> urls = {p1.url(), p2.url()};
  const std::array<std::string, 2> tokens = {server.rw_token, server.NewToken("demo", "desktop")};
  const std::array<std::string, 2> dirs = {dir + "/one", dir + "/two"};
  std::array<std::optional<TestMount>, 2> m;
  for (int d = 0; d < 2; ++d) m[d].emplace(urls[d], tokens[d], dirs[d], flags);
  const std::string one = m[0]->path(), two = m[1]->path();
  ASSERT_EQ(::mkdir((one + "/a").c_str(), 0755), 0);
  ASSERT_TRUE(Within(std::chrono::seconds(10), [&] { return fs::exists(two + "/a"); }));
  TwoWriters w(seed, {one, two});
  std::mt19937_64 turns(seed ^ 0x7a);
  size_t files = 0;
  int killed = 0, restarts = 0;
  for (int round = 1, rounds = Scaled(12); round <= rounds; ++round) {
    const bool offline = round % 2 == 1;
    w.SetOffline(offline);
    w.Note(offline ? "-- offline" : "-- live");
    const std::string rule = offline ? "refuse /commit 0 -1\nstatus500 /events 0 -1\nstatus500 /changes 0 -1" : "pass";
    p1.SetRule(rule);
    p2.SetRule(rule);
    for (int i = 0; i < 20; ++i) {
      const int d = static_cast<int>(turns() % 2);
      if (!w.Step(d)) return;
      if (faults && !offline && turns() % 8 == 0) {
        static const std::vector<std::string> rules = {"pass", "cut /commit 10 1", "cut /commit 10 2 1",
                                                       "refuse /blocks 0 2", "cut /blocks 100 1"};
        const std::string& r = rules[turns() % rules.size()];
        w.Note("device " + std::to_string(d) + " server: " + r);
        (d == 0 ? p1 : p2).SetRule(r);
      }
      if (faults && !offline && turns() % 24 == 0) {
        w.Note("server: kill -9 and restart");
        server.Kill();
        server.Start();
        ++restarts;
      }
      if (kill_every > 0 && turns() % kill_every == 0) {
        w.Note("device " + std::to_string(d) + ": kill -9 and restart");
        KillMount(m[d]->path());
        if (::testing::Test::HasFatalFailure()) return;
        m[d].reset();
        m[d].emplace(urls[d], tokens[d], dirs[d], flags);
        ++killed;
      }
    }
    p1.SetRule("pass");
    p2.SetRule("pass");
    // Quiet: both journals empty and the same tree on both, which stays.
    std::string a, b;
    ASSERT_TRUE(Within(std::chrono::seconds(30), [&] {
      if (!JournalEmptiesWithin(one, std::chrono::seconds(1)) || !JournalEmptiesWithin(two, std::chrono::seconds(1)))
        return false;
      a = Describe(one);
      b = Describe(two);
      return a == b;
    })) << "round " << round << ": the devices do not agree\n" << w.History() << StatusOf(one) << StatusOf(two)
        << TreeDiff(a, b, "device one", "device two");
    w.Note("-- round " + std::to_string(round) + " checked");
    w.Check(one, a);
    if (::testing::Test::HasFailure()) return;
    files += std::count(a.begin(), a.end(), '\n');
  }
  EXPECT_GT(files, 50u) << "the trees were nearly empty: nothing was checked";
  if (kill_every > 0) {
    EXPECT_GT(killed, 2) << "hardly a mount was killed: nothing was checked";
  }
  if (faults) {
    EXPECT_GT(restarts, 0) << "the server was never restarted: nothing was checked";
  }
  const std::string want = Describe(one);
  TestMount fresh(server, server.ro_token, dir + "/fresh");
  const std::string got = Describe(fresh.path());
  EXPECT_TRUE(got == want) << "the server's copy differs\n" << w.History() << TreeDiff(got, want, "the server", "device one");
}

TEST_F(ModelTest, TwoDevicesWritingTheSameFilesLoseNothing) { RunTwo(server_, dir_, Seed(9), 0); }

TEST_F(ModelTest, TwoDevicesWithKilledMountsLoseNothing) { RunTwo(server_, dir_, Seed(4), 16, /*faults=*/true); }

}  // namespace
}  // namespace tidefs
