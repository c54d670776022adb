// GET /events against the real server: the token check, commits pushed in
// order with their records, a subscriber that stops reading never delaying
// the others, and bad messages closing only their own connection.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "client/event_stream.h"
#include "core/event_codec.h"
#include "helpers.h"
#include "test_server.h"

namespace tidefs {
namespace {

// A hand-made WebSocket client: it can misbehave (never read, send junk).
class RawSocket {
 public:
  RawSocket(const std::string& url, const std::string& token, int rcvbuf = 0) {
    int port = std::stoi(url.substr(url.rfind(':') + 1));
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf) setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect failed");
    std::string req = "GET /v1/projects/demo/events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n";
    if (!token.empty()) req += "Authorization: Bearer " + token + "\r\n";
    req += "\r\n";
    Send(req);
    // The answer's head, byte by byte (the frames after it stay unread).
    while (head_.find("\r\n\r\n") == std::string::npos) {
      char c;
      if (read(fd_, &c, 1) != 1) break;
      head_ += c;
    }
  }
  ~RawSocket() { close(fd_); }
  int status() const { return head_.size() > 12 ? std::stoi(head_.substr(9, 3)) : 0; }
  void Send(const std::string& bytes) { (void)!write(fd_, bytes.data(), bytes.size()); }
  // A masked text frame (mask 0: the bytes go as they are).
  void SendText(const std::string& text, uint64_t claimed_len = 0) {
    uint64_t len = claimed_len ? claimed_len : text.size();
    std::string f(1, static_cast<char>(0x81));
    if (len < 126) {
      f += static_cast<char>(0x80 | len);
    } else if (len < 65536) {
      f += static_cast<char>(0x80 | 126);
      f += static_cast<char>(len >> 8);
      f += static_cast<char>(len & 0xff);
    } else {
      f += static_cast<char>(0x80 | 127);
      for (int i = 7; i >= 0; --i) f += static_cast<char>((len >> (8 * i)) & 0xff);
    }
    f += std::string(4, '\0');
    Send(f + text);
  }
  // Reads until `want` shows up in the stream or it ends; what was read.
  std::string ReadUntil(const std::string& want, std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline && got_.find(want) == std::string::npos) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      char buf[65536];
      ssize_t n = read(fd_, buf, sizeof buf);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      got_.append(buf, n);
    }
    return got_;
  }
  bool closed() const { return closed_; }

 private:
  int fd_ = -1;
  std::string head_, got_;
  bool closed_ = false;
};

// A well-behaved subscriber (the mount's own client), recording commits.
class Listener {
 public:
  explicit Listener(ClientOptions o)
      : stream_(o, {[this](std::string_view m) {
                      auto ev = DecodeEvent(m);
                      if (!ev.ok()) return ev.status();
                      std::lock_guard lock(mu_);
                      if (ev->type == Event::Type::kCommit) {
                        commits_.push_back(*ev);
                        arrival_.push_back(std::chrono::steady_clock::now());
                      }
                      if (ev->type == Event::Type::kHello) hello_ = true;
                      if (ev->type == Event::Type::kProgress) progress_.push_back(*ev);
                      return Status::Ok();
                    },
                    nullptr}) {
    stream_.Start();
  }
  bool WaitHello() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::lock_guard lock(mu_);
        if (hello_) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return false;
  }
  // Waits for a commit event of seq `seq`; the time it arrived.
  std::optional<std::chrono::steady_clock::time_point> WaitSeq(uint64_t seq, std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::lock_guard lock(mu_);
        for (size_t i = 0; i < commits_.size(); ++i)
          if (commits_[i].seq == seq) return arrival_[i];
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return std::nullopt;
  }
  std::vector<Event> commits() {
    std::lock_guard lock(mu_);
    return commits_;
  }
  std::vector<Event> progress() {
    std::lock_guard lock(mu_);
    return progress_;
  }

 private:
  std::mutex mu_;
  std::vector<Event> commits_, progress_;
  std::vector<std::chrono::steady_clock::time_point> arrival_;
  bool hello_ = false;
  EventStream stream_;
};

class EventsTest : public ::testing::Test {
 protected:
  // One commit of `n` new directories; its seq.
  uint64_t MakeDirs(int n) {
    std::vector<CommitOp> ops;
    for (int i = 0; i < n; ++i) {
      ++next_id_;
      ops.push_back(MkdirOp(kRootId, "dir-with-a-fairly-long-name-" + std::to_string(next_id_), next_id_));
    }
    auto r = c_.Commit(ops);
    EXPECT_TRUE(r.ok() && !r->refused);
    return r.ok() ? r->head : 0;
  }
  TestServer server_;
  ApiClient c_ = server_.Client(server_.rw_token);
  uint64_t next_id_ = 1000;
};

TEST_F(EventsTest, NeedsAnUpgradeAndAToken) {
  auto plain = c_.Raw("GET", "/events");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->status, 426);
  EXPECT_EQ(RawSocket(server_.url(), "").status(), 401);
  EXPECT_EQ(RawSocket(server_.url(), "tdf_bogus").status(), 401);
  EXPECT_EQ(RawSocket(server_.url(), server_.rw_token).status(), 101);
}

TEST_F(EventsTest, CommitsArriveInOrderWithTheirRecords) {
  ClientOptions o = c_.options();
  Listener l(o);
  ASSERT_TRUE(l.WaitHello());
  uint64_t s1 = MakeDirs(1);
  uint64_t s2 = MakeDirs(3);
  ASSERT_TRUE(l.WaitSeq(s2, std::chrono::seconds(2)));
  auto cs = l.commits();
  ASSERT_EQ(cs.size(), 2u);
  EXPECT_EQ(cs[0].seq, s1);
  EXPECT_EQ(cs[1].prev, s1);
  EXPECT_TRUE(cs[1].has_records);
  EXPECT_EQ(cs[1].records.size(), 3u);
  EXPECT_EQ(cs[1].device, "laptop");
  // A commit too big to carry is announced by seq alone.
  uint64_t s3 = MakeDirs(400);
  ASSERT_TRUE(l.WaitSeq(s3, std::chrono::seconds(2)));
  EXPECT_FALSE(l.commits().back().has_records);
}

TEST_F(EventsTest, ASubscriberThatStopsReadingDelaysNoOne) {
  ClientOptions o = c_.options();
  Listener good(o);
  ASSERT_TRUE(good.WaitHello());
  RawSocket stuck(server_.url(), server_.rw_token, 4096);  // reads nothing from here on
  ASSERT_EQ(stuck.status(), 101);
  // Enough to fill the socket buffers and the stuck one's queue.
  std::chrono::milliseconds worst{0};
  for (int i = 0; i < 400; ++i) {
    uint64_t seq = MakeDirs(200);
    auto sent = std::chrono::steady_clock::now();
    auto got = good.WaitSeq(seq, std::chrono::seconds(2));
    ASSERT_TRUE(got) << "commit " << seq << " never reached the reading subscriber";
    worst = std::max(worst, std::chrono::duration_cast<std::chrono::milliseconds>(*got - sent));
  }
  EXPECT_LT(worst.count(), 500) << "a stuck subscriber slowed the others";
  // The stuck one, reading again, is told to catch up (its queue was dropped).
  std::string seen = stuck.ReadUntil("\"type\":\"resync\"", std::chrono::seconds(10));
  EXPECT_NE(seen.find("\"type\":\"resync\""), std::string::npos) << seen.size() << " bytes read";
}

TEST_F(EventsTest, BadMessagesCloseOnlyTheirOwnConnection) {
  ClientOptions o = c_.options();
  Listener good(o);
  ASSERT_TRUE(good.WaitHello());
  RawSocket junk(server_.url(), server_.rw_token);
  junk.SendText("this is not json");
  junk.ReadUntil("\x88", std::chrono::seconds(5));  // a close frame, then the end
  junk.ReadUntil("never", std::chrono::seconds(5));
  EXPECT_TRUE(junk.closed());
  RawSocket unknown(server_.url(), server_.rw_token);
  unknown.SendText(R"({"type":"commit","seq":5})");
  unknown.ReadUntil("never", std::chrono::seconds(5));
  EXPECT_TRUE(unknown.closed());
  RawSocket huge(server_.url(), server_.rw_token);
  huge.SendText(std::string(1000, 'x'), 10 << 20);  // claims 10 MiB
  huge.ReadUntil("never", std::chrono::seconds(5));
  EXPECT_TRUE(huge.closed());
  // A good progress report is accepted; the others still hear commits.
  RawSocket fine(server_.url(), server_.rw_token);
  fine.SendText(R"({"type":"progress","transfers":[{"path":"/a","direction":"up","done":1,"total":2,"rate":3}]})");
  uint64_t seq = MakeDirs(1);
  EXPECT_TRUE(good.WaitSeq(seq, std::chrono::seconds(2)));
  std::string seen = fine.ReadUntil("\"seq\":" + std::to_string(seq), std::chrono::seconds(2));
  EXPECT_FALSE(fine.closed());
  EXPECT_NE(seen.find("\"seq\":" + std::to_string(seq)), std::string::npos);
  // Its report reached the other subscriber, as sent.
  auto p = good.progress();
  ASSERT_FALSE(p.empty());
  EXPECT_EQ(p.back().device, "laptop");
  ASSERT_EQ(p.back().transfers.size(), 1u);
  EXPECT_EQ(p.back().transfers[0], (Transfer{"/a", true, 1, 2, 3}));
}

}  // namespace
}  // namespace tidefs
