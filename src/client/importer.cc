#include "client/importer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "client/uploader.h"
#include "core/block_frame.h"
#include "core/names.h"

namespace tidefs {

uint64_t NewNodeId() {
  for (;;) {
    uint64_t v;
    if (getrandom(&v, sizeof v, 0) != sizeof v) continue;
    v &= kMaxNodeId;
    if (v > kRootId) return v;
  }
}

namespace {

constexpr size_t kBatchBlockBytes = 64 << 20;     // buffered block bytes before a flush
constexpr uint64_t kStreamFileSize = 8 << 20;     // files above this are uploaded as they are read

int64_t MtimeNs(const struct stat& st) { return int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec; }

class Importer {
 public:
  Importer(ApiClient* c, const ImportOptions& o, ImportStats* s) : client_(c), opts_(o), stats_(s) {}

  Status Run() {
    struct stat st;
    if (::stat(opts_.src_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      return Status::Invalid("source " + opts_.src_dir + " is not a directory");
    bool existed;
    ASSIGN_OR_RETURN(uint64_t dest, ResolveDest(&existed));
    RETURN_IF_ERROR(ImportDir(opts_.src_dir, dest, existed));
    RETURN_IF_ERROR(Flush());
    if (opts_.progress) fprintf(stderr, "\n");
    return Status::Ok();
  }

 private:
  // Finds or creates the destination directory; `existed` tells which.
  Result<uint64_t> ResolveDest(bool* existed) {
    uint64_t cur = kRootId;
    *existed = true;
    std::string path = opts_.dest;
    size_t i = 0;
    while (i < path.size()) {
      if (path[i] == '/') { ++i; continue; }
      size_t j = path.find('/', i);
      if (j == std::string::npos) j = path.size();
      std::string name = path.substr(i, j - i);
      i = j;
      RETURN_IF_ERROR(ValidateName(name));
      std::optional<NodeRecord> found;
      if (*existed) {
        ASSIGN_OR_RETURN(auto children, client_->ListAll(cur));
        for (auto& c : children)
          if (c.name == name) found = c;
      }
      if (found) {
        if (found->kind != NodeKind::kDir) return Status::Invalid("destination " + opts_.dest + ": " + name + " is not a directory");
        cur = found->id;
      } else {
        *existed = false;
        CommitOp op;
        op.type = OpType::kMkdir;
        op.id = NewNodeId();
        op.parent = cur;
        op.name = name;
        ops_.push_back(op);
        stats_->dirs++;
        cur = op.id;
      }
    }
    return cur;
  }

  Status ImportDir(const std::string& dir, uint64_t node, bool existed) {
    std::unordered_map<std::string, NodeRecord> remote;
    if (existed) {
      // Commit what is pending so the listing is current.
      RETURN_IF_ERROR(Flush());
      ASSIGN_OR_RETURN(auto children, client_->ListAll(node));
      for (auto& c : children) remote.emplace(c.name, std::move(c));
    }
    DIR* d = ::opendir(dir.c_str());
    if (!d) return Status::IoError("cannot open directory " + dir + ": " + std::strerror(errno));
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
    }
    ::closedir(d);
    std::sort(names.begin(), names.end());
    for (const auto& name : names) {
      std::string path = dir + "/" + name;
      if (Status st = ValidateName(name); !st.ok())
        return Status::Invalid("cannot import " + path + ": " + st.message());
      struct stat st;
      if (::lstat(path.c_str(), &st) != 0) return Status::IoError("cannot stat " + path + ": " + std::strerror(errno));
      auto it = remote.find(name);
      const NodeRecord* existing = it == remote.end() ? nullptr : &it->second;
      if (S_ISDIR(st.st_mode)) {
        if (existing && existing->kind != NodeKind::kDir)
          return Status::Exists("cannot import " + path + ": the project has a non-directory there");
        uint64_t id = existing ? existing->id : NewNodeId();
        if (!existing) {
          CommitOp op;
          op.type = OpType::kMkdir;
          op.id = id;
          op.parent = node;
          op.name = name;
          op.has_mode = true;
          op.mode = st.st_mode & kModeMask;
          op.has_mtime = true;
          op.mtime_ns = MtimeNs(st);
          ops_.push_back(op);
          stats_->dirs++;
        }
        RETURN_IF_ERROR(MaybeFlush());
        RETURN_IF_ERROR(ImportDir(path, id, existing != nullptr));
      } else if (S_ISREG(st.st_mode)) {
        if (existing && existing->kind != NodeKind::kFile)
          return Status::Exists("cannot import " + path + ": the project has a non-file there");
        RETURN_IF_ERROR(ImportFile(path, st, node, name, existing));
      } else if (S_ISLNK(st.st_mode)) {
        if (existing) continue;  // symlinks are created, never rewritten
        std::string target(st.st_size + 1, '\0');
        ssize_t n = ::readlink(path.c_str(), target.data(), target.size());
        if (n < 0) return Status::IoError("cannot read link " + path + ": " + std::strerror(errno));
        target.resize(n);
        CommitOp op;
        op.type = OpType::kSymlink;
        op.id = NewNodeId();
        op.parent = node;
        op.name = name;
        op.target = target;
        op.has_mtime = true;
        op.mtime_ns = MtimeNs(st);
        ops_.push_back(op);
        stats_->symlinks++;
      } else {
        spdlog::warn("skipping {}: not a file, directory or symlink", path);
      }
      RETURN_IF_ERROR(MaybeFlush());
    }
    return Status::Ok();
  }

  Status ImportFile(const std::string& path, const struct stat& st, uint64_t parent, const std::string& name,
                    const NodeRecord* existing) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::IoError("cannot open " + path + ": " + std::strerror(errno));
    CommitOp op;
    op.size = 0;
    std::string buf(kBlockSize, '\0');
    const bool stream = static_cast<uint64_t>(st.st_size) > kStreamFileSize;
    std::vector<std::pair<Hash128, std::string>> pending;  // streamed files only
    size_t pending_bytes = 0;
    Status status;
    for (;;) {
      size_t got = 0;
      while (got < kBlockSize) {
        ssize_t n = ::read(fd, buf.data() + got, kBlockSize - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          status = Status::IoError("cannot read " + path + ": " + std::strerror(errno));
          break;
        }
        if (n == 0) break;
        got += n;
      }
      if (!status.ok() || got == 0) break;
      Hash128 h = HashBlock(buf.data(), got);
      op.blocks.push_back(h);
      op.size += got;
      if (stream) {
        pending.emplace_back(h, buf.substr(0, got));
        pending_bytes += got;
        if (pending_bytes >= 32u << 20) {
          status = SendBlocks(&pending);
          pending_bytes = 0;
          if (!status.ok()) break;
        }
      } else if (batch_hashes_.insert(h).second) {
        batch_blocks_.emplace_back(h, buf.substr(0, got));
        batch_bytes_ += got;
      }
      if (got < kBlockSize) break;
    }
    ::close(fd);
    RETURN_IF_ERROR(status);
    if (stream) RETURN_IF_ERROR(SendBlocks(&pending));
    stats_->bytes += op.size;
    op.has_mtime = true;
    op.mtime_ns = MtimeNs(st);
    if (existing) {
      auto m = client_->GetManifest(existing->id);
      if (m.ok() && m->size == op.size && m->blocks == op.blocks) {
        stats_->unchanged++;
        return Status::Ok();
      }
      op.type = OpType::kWrite;
      op.id = existing->id;
      op.has_base = true;
      op.base = existing->version;
    } else {
      op.type = OpType::kCreate;
      op.id = NewNodeId();
      op.parent = parent;
      op.name = name;
      op.has_mode = true;
      op.mode = st.st_mode & kModeMask;
    }
    ops_.push_back(std::move(op));
    stats_->files++;
    return Status::Ok();
  }

  Status MaybeFlush() {
    if (ops_.size() >= opts_.batch_ops || batch_bytes_ >= kBatchBlockBytes) return Flush();
    return Status::Ok();
  }

  // Uploads the blocks of `blocks` the server lacks, in parallel requests.
  Status SendBlocks(std::vector<std::pair<Hash128, std::string>>* blocks) {
    UploadStats up;
    RETURN_IF_ERROR(SendMissingBlocks(client_, blocks, opts_.parallel, &up));
    stats_->blocks_sent += up.blocks_sent;
    stats_->bytes_sent += up.bytes_sent;
    return Status::Ok();
  }

  Status Flush() {
    RETURN_IF_ERROR(SendBlocks(&batch_blocks_));
    batch_hashes_.clear();
    batch_bytes_ = 0;
    if (ops_.empty()) return Status::Ok();
    ASSIGN_OR_RETURN(CommitReply reply, client_->Commit(ops_));
    if (reply.refused) {
      const CommitOp& op = ops_[std::min(reply.op, ops_.size() - 1)];
      return Status(reply.error == "conflict" ? Code::kConflict : Code::kInvalidArgument,
                    "commit refused at " + std::string(OpName(op.type)) + " \"" + op.name + "\": " + reply.message +
                        " (" + reply.reason + ")");
    }
    stats_->commits++;
    ops_.clear();
    if (opts_.progress) {
      fprintf(stderr, "\rimported %llu files, %llu dirs, %.1f MB read, %.1f MB sent",
              (unsigned long long)stats_->files, (unsigned long long)stats_->dirs, stats_->bytes / 1e6,
              stats_->bytes_sent / 1e6);
      fflush(stderr);
    }
    return Status::Ok();
  }

  ApiClient* client_;
  const ImportOptions& opts_;
  ImportStats* stats_;
  std::vector<CommitOp> ops_;
  std::vector<std::pair<Hash128, std::string>> batch_blocks_;
  std::unordered_set<Hash128, Hash128Hasher> batch_hashes_;
  size_t batch_bytes_ = 0;
};

}  // namespace

Status Import(ApiClient* client, const ImportOptions& opts, ImportStats* stats) {
  Importer imp(client, opts, stats);
  return imp.Run();
}

}  // namespace tidefs
