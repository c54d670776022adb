#include "server/http_server.h"

#include "core/block_frame.h"
#include "core/event_codec.h"
#include "core/memory.h"
#include "core/protocol.h"
#include "core/url.h"

#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <boost/beast/websocket.hpp>
#include <spdlog/spdlog.h>

namespace tidefs {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

namespace {

// Request bodies from 1 MiB up to an upload's limit go in buffers kept for
// reuse (16 at most, 10 MiB each at most); larger ones (a commit of a
// huge tree) in a string freed with the connection.
constexpr size_t kBigBody = 1 << 20;
constexpr size_t kMaxPooledBody = kMaxUploadBody + 4096;
BigBufferPool body_pool(16);

template <class Body>
HttpRequest Convert(http::request<Body>& req, std::string_view body) {
  HttpRequest r;
  r.method = std::string(req.method_string());
  std::string_view target(req.target().data(), req.target().size());
  size_t q = target.find('?');
  if (!PercentDecode(target.substr(0, q), &r.path, false)) r.bad_target = true;
  if (q != std::string_view::npos) {
    std::string_view query = target.substr(q + 1);
    while (!query.empty()) {
      size_t amp = query.find('&');
      std::string_view pair = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
      if (pair.empty()) continue;
      size_t eq = pair.find('=');
      std::string k, v;
      if (!PercentDecode(pair.substr(0, eq), &k, true) ||
          !PercentDecode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1), &v, true) ||
          r.query.count(k)) {
        r.bad_target = true;  // malformed escape or a repeated parameter
        continue;
      }
      r.query.emplace(std::move(k), std::move(v));
    }
  }
  for (const auto& f : req) {
    std::string name(f.name_string());
    for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    r.headers[name] = std::string(f.value());
  }
  r.body = body;
  return r;
}

bool IsClientGone(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == net::error::eof || ec == beast::error::timeout ||
         ec == net::error::connection_reset || ec == net::error::operation_aborted ||
         ec == net::error::broken_pipe;
}

}  // namespace

struct HttpServer::Impl {
  Api* api;
  Metrics* metrics;
  // One io_context per thread, each run by that thread alone; a connection
  // stays on the one it was dealt at accept. A shared context handed every
  // completion to whichever thread was free: a futex wake and a context
  // switch per 64 KiB sent, 15 % of the server's CPU on a download. The
  // price: a handler that blocks (a commit's fdatasync) holds up the other
  // connections of its thread, so the accepting thread serves none (unless
  // it is the only one) and keeps taking new ones.
  // (`more` first: it is destroyed last. An accept still waiting when
  // `ioc` is destroyed holds a socket of the context it was meant for.)
  std::vector<std::unique_ptr<net::io_context>> more;  // the serving threads'
  std::mutex contexts_mu;  // `more` and `stopped`: Stop may come from any thread
  bool stopped = false;
  size_t next_context = 0;  // round robin, on the accepting thread only
  net::io_context ioc{1};   // accepts (and serves, without `more`)
  tcp::acceptor acceptor{ioc};

  Impl(Api* a, Metrics* m) : api(a), metrics(m) {}
  ~Impl() { api->events()->Clear(); }

  net::awaitable<void> WriteSimple(beast::tcp_stream& stream, int status, unsigned version, bool keep,
                                   const HttpResponse& resp, beast::error_code& ec) {
    http::response<http::string_body> res{static_cast<http::status>(status), version};
    res.set(http::field::server, "tidefs");
    res.set(kProtocolHeader, kProtocolLevelText);
    res.set(http::field::content_type, resp.content_type);
    for (const auto& [k, v] : resp.headers) res.set(k, v);
    res.body() = resp.body;
    res.keep_alive(keep);
    res.prepare_payload();
    co_await http::async_write(stream, res, net::redirect_error(net::use_awaitable, ec));
  }

  // Reads the body into `body` (which keeps its size between requests, so
  // its pages are reused, never re-zeroed), or one of 1 MiB or more into
  // `big`, from a pool the connections share: an upload's first bodies on
  // a new connection were fresh memory to fault in (core/memory.h), and
  // each mount makes new connections. Returns the body's bytes.
  net::awaitable<std::string_view> ReadBody(beast::tcp_stream& stream, beast::flat_buffer& buffer,
                                            http::request_parser<http::buffer_body>& parser, std::string& body,
                                            BigBuffer& big, size_t limit, beast::error_code& ec) {
    size_t used = 0;
    if (parser.content_length()) {
      // Known length: take what is buffered, then read the rest straight
      // from the socket into the body (no copy through Beast's buffer).
      size_t want = static_cast<size_t>(*parser.content_length());
      char* into;
      if (want >= kBigBody && want <= kMaxPooledBody) {
        if (big.size() < want) {
          body_pool.Give(std::move(big));
          big = body_pool.Take(want);
        }
        into = big.data();
      } else {
        if (body.size() < want) body.resize(want);
        into = body.data();
      }
      size_t have = std::min(buffer.size(), want);
      std::memcpy(into, buffer.data().data(), have);
      buffer.consume(have);
      if (want > have)
        co_await net::async_read(stream, net::buffer(into + have, want - have),
                                 net::redirect_error(net::use_awaitable, ec));
      co_return std::string_view(into, want);
    }
    while (!parser.is_done()) {
      if (used == body.size()) {
        if (body.size() >= limit) {
          ec = http::error::body_limit;
          co_return std::string_view(body.data(), used);
        }
        body.resize(std::min(limit, std::max<size_t>(body.size() * 2, 64 * 1024)));
      }
      auto& b = parser.get().body();
      b.data = body.data() + used;
      b.size = body.size() - used;
      co_await http::async_read(stream, buffer, parser, net::redirect_error(net::use_awaitable, ec));
      if (ec == http::error::need_buffer) ec = {};
      if (ec) co_return std::string_view(body.data(), used);
      used = body.size() - b.size;
    }
    co_return std::string_view(body.data(), used);
  }

  net::awaitable<void> Session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    bool linger = false;  // a body refused before it was read: drain it before closing
    // Beast reads at most the free capacity at a time: without room, a
    // 4 MiB upload arrives in thousands of tiny reads.
    buffer.reserve(256 * 1024);
    std::string body;
    BigBuffer big;
    struct GiveBack {
      BigBuffer& big;
      ~GiveBack() { body_pool.Give(std::move(big)); }
    } give_back{big};
    beast::error_code ec;
    for (;;) {
      http::request_parser<http::buffer_body> parser;
      parser.header_limit(16 * 1024);
      // The largest endpoint limit; each endpoint's own is enforced below.
      // (Not boost::none: Beast 1.74 compares lengths with it wrongly.)
      parser.body_limit(Api::BodyLimitFor("POST", "/commit"));
      stream.expires_after(std::chrono::seconds(120));
      co_await http::async_read_header(stream, buffer, parser, net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        if (!IsClientGone(ec)) {
          HttpResponse bad = ErrorResponse(Status::Invalid("malformed HTTP request: " + ec.message()));
          beast::error_code ignore;
          co_await WriteSimple(stream, bad.status, 11, false, bad, ignore);
        }
        break;
      }
      auto t0 = std::chrono::steady_clock::now();
      size_t limit;
      {
        auto& h = parser.get();
        std::string target(h.target());
        std::string path = target.substr(0, target.find('?'));
        limit = Api::BodyLimitFor(std::string(h.method_string()), path);
        if (parser.content_length() && *parser.content_length() > limit) {
          HttpResponse bad = ErrorResponse(Status::TooLarge(
              "request body of " + std::to_string(*parser.content_length()) + " bytes is over the " +
              std::to_string(limit) + "-byte limit of " + path));
          beast::error_code ignore;
          co_await WriteSimple(stream, bad.status, h.version(), false, bad, ignore);
          linger = true;
          break;
        }
      }
      const std::string_view body_bytes = co_await ReadBody(stream, buffer, parser, body, big, limit, ec);
      if (ec) {
        if (!IsClientGone(ec)) {
          bool too_big = ec == http::error::body_limit;
          HttpResponse bad = ErrorResponse(too_big ? Status::TooLarge("request body is over the limit for this endpoint")
                                                   : Status::Invalid("malformed HTTP request: " + ec.message()));
          beast::error_code ignore;
          co_await WriteSimple(stream, bad.status, 11, false, bad, ignore);
          linger = too_big;
        }
        break;
      }
      auto& req = parser.get();
      if (websocket::is_upgrade(req) && Api::IsEventsPath(std::string(req.target().substr(0, req.target().find('?'))))) {
        HttpRequest r = Convert(req, {});
        HttpResponse refusal;
        auto sub = api->AuthorizeEvents(r, &refusal);
        metrics->RecordRequest("GET /events", sub.ok() ? 101 : refusal.status, 0, 0, 0);
        if (!sub.ok()) {
          spdlog::debug("GET {} -> {}: {}", r.path, refusal.status, sub.status().message());
          co_await WriteSimple(stream, refusal.status, req.version(), false, refusal, ec);
          break;
        }
        http::request<http::empty_body> upgrade(req.base());
        co_await EventSession(std::move(stream), std::move(upgrade), std::move(*sub));
        co_return;
      }
      const bool keep = req.keep_alive();
      const unsigned version = req.version();
      const uint64_t bytes_in = body_bytes.size();
      HttpRequest r = Convert(req, body_bytes);
      std::string route;
      HttpResponse resp = api->Handle(r, &route);
      uint64_t bytes_out = resp.body.size();
      stream.expires_after(std::chrono::seconds(300));
      if (!resp.stream) {
        co_await WriteSimple(stream, resp.status, version, keep, resp, ec);
      } else {
        http::response<http::empty_body> res{static_cast<http::status>(resp.status), version};
        res.set(http::field::server, "tidefs");
        res.set(kProtocolHeader, kProtocolLevelText);
        res.set(http::field::content_type, resp.content_type);
        for (const auto& [k, v] : resp.headers) res.set(k, v);
        res.set(http::field::content_length, std::to_string(resp.stream_length));
        res.keep_alive(keep);
        http::response_serializer<http::empty_body> sr{res};
        co_await http::async_write_header(stream, sr, net::redirect_error(net::use_awaitable, ec));
        uint64_t left = resp.stream_length;
        while (!ec && left > 0) {
          Result<std::string_view> next = resp.stream();
          std::string_view piece = next.ok() ? *next : std::string_view();
          if (!next.ok() || piece.empty() || piece.size() > left) {
            spdlog::error("{} {}: aborting the response after {} of {} bytes: {}", r.method, r.path,
                          resp.stream_length - left, resp.stream_length,
                          next.ok() ? "body shorter than announced" : next.status().ToString());
            ec = net::error::operation_aborted;
            resp.status = 500;
            break;
          }
          left -= piece.size();
          bytes_out += piece.size();
          co_await net::async_write(stream, net::buffer(piece.data(), piece.size()), net::redirect_error(net::use_awaitable, ec));
        }
      }
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      metrics->RecordRequest(route, resp.status, secs, bytes_in, bytes_out);
      if (resp.status >= 500) spdlog::warn("{} {} -> {}", r.method, r.path, resp.status);
      else spdlog::debug("{} {} -> {} in {:.1f} ms", r.method, r.path, resp.status, secs * 1000);
      if (ec || !keep) break;
    }
    beast::error_code ignore;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignore);
    if (linger) {
      // A body refused unread is still on its way: closing now would reset
      // the connection, and the client could lose the 413 before reading
      // it. The rest is read and dropped (for a while, up to a bound).
      stream.expires_after(std::chrono::seconds(2));
      static thread_local char sink[1 << 16];
      for (size_t drained = 0; drained < (64u << 20);) {
        size_t n = co_await stream.async_read_some(net::buffer(sink), net::redirect_error(net::use_awaitable, ignore));
        if (ignore) break;
        drained += n;
      }
    }
  }

  // One WebSocket subscriber: a hello, then the project's events as the
  // hub queues them; the mount's progress reports the other way. Beast's
  // keep-alive pings find dead peers. Runs on the connection's strand.
  net::awaitable<void> EventSession(beast::tcp_stream stream, http::request<http::empty_body> req,
                                    Api::Subscription sub) {
    auto ex = co_await net::this_coro::executor;
    websocket::stream<beast::tcp_stream> ws(std::move(stream));
    beast::get_lowest_layer(ws).expires_never();
    websocket::stream_base::timeout opt{std::chrono::seconds(10), std::chrono::seconds(30), true};
    ws.set_option(opt);
    ws.read_message_max(kMaxClientMessage);
    ws.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& res) { res.set(http::field::server, "tidefs"); }));
    beast::error_code ec;
    co_await ws.async_accept(req, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      spdlog::debug("events: WebSocket handshake failed: {}", ec.message());
      co_return;
    }
    auto hub = api->events();
    auto timer = std::make_shared<net::steady_timer>(ex, net::steady_timer::time_point::max());
    auto s = std::make_shared<EventHub::Subscriber>();
    s->project = sub.token.project_id;
    s->device = sub.token.device;
    s->wake = [timer, ex] { net::post(ex, [timer] { timer->cancel(); }); };
    auto done = std::make_shared<bool>(false);
    hub->Subscribe(s);
    spdlog::debug("events: device {} subscribed to {} at seq {}", sub.token.device, sub.token.project, sub.head);
    ws.text(true);
    // The writer: the hello, then whatever the hub queues.
    auto writer = [](websocket::stream<beast::tcp_stream>& ws, std::shared_ptr<EventHub::Subscriber> s,
                     std::shared_ptr<net::steady_timer> timer, std::shared_ptr<bool> done,
                     std::string hello) -> net::awaitable<void> {
      beast::error_code ec;
      co_await ws.async_write(net::buffer(hello), net::redirect_error(net::use_awaitable, ec));
      while (!ec && !*done) {
        auto batch = s->TakeAll();
        if (batch.empty()) {
          timer->expires_at(net::steady_timer::time_point::max());
          co_await timer->async_wait(net::redirect_error(net::use_awaitable, ec));
          ec = {};
          continue;
        }
        for (const auto& m : batch) {
          co_await ws.async_write(net::buffer(*m), net::redirect_error(net::use_awaitable, ec));
          if (ec) break;
        }
      }
      *done = true;
    };
    auto writing = std::make_shared<bool>(true);
    net::co_spawn(ex, writer(ws, s, timer, done, api->HelloMessage(sub)),
                  [writing, timer](std::exception_ptr) { *writing = false; });
    beast::flat_buffer buf;
    std::string why;
    auto last_report = std::chrono::steady_clock::time_point{};
    int too_fast = 0;
    while (!*done) {
      buf.clear();
      co_await ws.async_read(buf, net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        if (ec == websocket::error::message_too_big) why = "message over " + std::to_string(kMaxClientMessage) + " bytes";
        else if (ec != websocket::error::closed && !IsClientGone(ec)) why = ec.message();
        break;
      }
      if (!ws.got_text()) {
        why = "binary message";
        break;
      }
      std::string_view text(static_cast<const char*>(buf.data().data()), buf.size());
      // Reports come at most every 250 ms from a mount; a flood is dropped
      // here, not fanned out to every subscriber.
      auto now = std::chrono::steady_clock::now();
      if (now - last_report < std::chrono::milliseconds(200)) {
        if (++too_fast > 100) {
          why = "progress reports faster than five a second";
          break;
        }
        continue;
      }
      last_report = now;
      too_fast = 0;
      auto ev = api->OnClientMessage(sub.token, text);
      if (!ev.ok()) {
        why = ev.status().message();
        break;
      }
      hub->Publish(sub.token.project_id, *ev, s.get());
    }
    *done = true;
    hub->Unsubscribe(s);
    if (auto ev = hub->DropProgress(sub.token.project_id, sub.token.device)) hub->Publish(sub.token.project_id, ev);
    if (!why.empty()) {
      spdlog::warn("events: closing the connection of device {} (project {}): {}", sub.token.device, sub.token.project, why);
      beast::get_lowest_layer(ws).expires_after(std::chrono::seconds(2));
      co_await ws.async_close(websocket::close_reason(websocket::close_code::policy_error, why.substr(0, 120)),
                              net::redirect_error(net::use_awaitable, ec));
    } else {
      spdlog::debug("events: device {} unsubscribed", sub.token.device);
    }
    // The writer may be inside a write or wait: end it before `ws` goes.
    beast::get_lowest_layer(ws).close();
    while (*writing) {
      timer->cancel();
      net::steady_timer t(ex, std::chrono::milliseconds(1));
      co_await t.async_wait(net::redirect_error(net::use_awaitable, ec));
    }
  }

  net::awaitable<void> AcceptLoop() {
    for (;;) {
      beast::error_code ec;
      // A strand per connection: a WebSocket reads and writes at once.
      net::io_context& ctx = more.empty() ? ioc : *more[next_context++ % more.size()];
      tcp::socket socket = co_await acceptor.async_accept(net::make_strand(ctx), net::redirect_error(net::use_awaitable, ec));
      if (ec == net::error::operation_aborted) co_return;
      if (ec) {
        // Out of file descriptors, most likely: wait a little instead of spinning.
        spdlog::warn("accept failed: {}", ec.message());
        net::steady_timer t(ioc, std::chrono::milliseconds(50));
        co_await t.async_wait(net::redirect_error(net::use_awaitable, ec));
        continue;
      }
      socket.set_option(tcp::no_delay(true), ec);
      auto ex = socket.get_executor();
      net::co_spawn(ex, Session(std::move(socket)), net::detached);
    }
  }
};

HttpServer::HttpServer(Api* api, Metrics* metrics) : impl_(std::make_unique<Impl>(api, metrics)) {}
HttpServer::~HttpServer() = default;

Status HttpServer::Listen(const std::string& host, uint16_t port) {
  beast::error_code ec;
  auto addr = net::ip::make_address(host, ec);
  if (ec) return Status::Invalid("listen address \"" + host + "\" is not an IP address");
  tcp::endpoint ep(addr, port);
  auto& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return Status::IoError("cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message());
  return Status::Ok();
}

uint16_t HttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void HttpServer::Run(int threads) {
  net::signal_set signals(impl_->ioc, SIGINT, SIGTERM);
  signals.async_wait([this](const beast::error_code& ec, int sig) {
    if (!ec) {
      spdlog::info("signal {}: stopping", sig);
      Stop();
    }
  });
  std::vector<std::thread> pool;
  {
    std::lock_guard lock(impl_->contexts_mu);
    for (int i = 1; i < threads && !impl_->stopped; ++i) {
      auto& ctx = *impl_->more.emplace_back(std::make_unique<net::io_context>(1));
      pool.emplace_back([&ctx] {
        auto idle = net::make_work_guard(ctx);  // runs until Stop, with or without connections
        ctx.run();
      });
    }
  }
  net::co_spawn(impl_->ioc, impl_->AcceptLoop(), net::detached);
  impl_->ioc.run();
  Stop();  // the accepting context ended: so do the others
  for (auto& t : pool) t.join();
}

void HttpServer::Stop() {
  std::lock_guard lock(impl_->contexts_mu);
  impl_->stopped = true;
  impl_->ioc.stop();
  for (auto& ctx : impl_->more) ctx->stop();
}

}  // namespace tidefs
