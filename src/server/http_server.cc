#include "server/http_server.h"

#include "core/url.h"

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <spdlog/spdlog.h>

namespace tidefs {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

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
  net::io_context ioc;
  tcp::acceptor acceptor{ioc};

  Impl(Api* a, Metrics* m) : api(a), metrics(m) {}

  net::awaitable<void> WriteSimple(beast::tcp_stream& stream, int status, unsigned version, bool keep,
                                   const HttpResponse& resp, beast::error_code& ec) {
    http::response<http::string_body> res{static_cast<http::status>(status), version};
    res.set(http::field::server, "tidefs");
    res.set(http::field::content_type, resp.content_type);
    for (const auto& [k, v] : resp.headers) res.set(k, v);
    res.body() = resp.body;
    res.keep_alive(keep);
    res.prepare_payload();
    co_await http::async_write(stream, res, net::redirect_error(net::use_awaitable, ec));
  }

  // Reads the body into `body` (which keeps its size between requests, so
  // its pages are reused, never re-zeroed). Returns the body's length.
  net::awaitable<size_t> ReadBody(beast::tcp_stream& stream, beast::flat_buffer& buffer,
                                  http::request_parser<http::buffer_body>& parser, std::string& body,
                                  size_t limit, beast::error_code& ec) {
    size_t used = 0;
    if (parser.content_length()) {
      // Known length: take what is buffered, then read the rest straight
      // from the socket into the body (no copy through Beast's buffer).
      size_t want = static_cast<size_t>(*parser.content_length());
      if (body.size() < want) body.resize(want);
      size_t have = std::min(buffer.size(), want);
      std::memcpy(body.data(), buffer.data().data(), have);
      buffer.consume(have);
      if (want > have)
        co_await net::async_read(stream, net::buffer(body.data() + have, want - have),
                                 net::redirect_error(net::use_awaitable, ec));
      co_return want;
    }
    while (!parser.is_done()) {
      if (used == body.size()) {
        if (body.size() >= limit) {
          ec = http::error::body_limit;
          co_return used;
        }
        body.resize(std::min(limit, std::max<size_t>(body.size() * 2, 64 * 1024)));
      }
      auto& b = parser.get().body();
      b.data = body.data() + used;
      b.size = body.size() - used;
      co_await http::async_read(stream, buffer, parser, net::redirect_error(net::use_awaitable, ec));
      if (ec == http::error::need_buffer) ec = {};
      if (ec) co_return used;
      used = body.size() - b.size;
    }
    co_return used;
  }

  net::awaitable<void> Session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    // Beast reads at most the free capacity at a time: without room, a
    // 4 MiB upload arrives in thousands of tiny reads.
    buffer.reserve(256 * 1024);
    std::string body;
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
          break;
        }
      }
      size_t body_len = co_await ReadBody(stream, buffer, parser, body, limit, ec);
      if (ec) {
        if (!IsClientGone(ec)) {
          bool too_big = ec == http::error::body_limit;
          HttpResponse bad = ErrorResponse(too_big ? Status::TooLarge("request body is over the limit for this endpoint")
                                                   : Status::Invalid("malformed HTTP request: " + ec.message()));
          beast::error_code ignore;
          co_await WriteSimple(stream, bad.status, 11, false, bad, ignore);
        }
        break;
      }
      auto& req = parser.get();
      const bool keep = req.keep_alive();
      const unsigned version = req.version();
      const uint64_t bytes_in = body_len;
      HttpRequest r = Convert(req, std::string_view(body.data(), body_len));
      std::string route;
      HttpResponse resp = api->Handle(r, &route);
      uint64_t bytes_out = resp.body.size();
      stream.expires_after(std::chrono::seconds(300));
      if (!resp.stream) {
        co_await WriteSimple(stream, resp.status, version, keep, resp, ec);
      } else {
        http::response<http::empty_body> res{static_cast<http::status>(resp.status), version};
        res.set(http::field::server, "tidefs");
        res.set(http::field::content_type, resp.content_type);
        for (const auto& [k, v] : resp.headers) res.set(k, v);
        res.set(http::field::content_length, std::to_string(resp.stream_length));
        res.keep_alive(keep);
        http::response_serializer<http::empty_body> sr{res};
        co_await http::async_write_header(stream, sr, net::redirect_error(net::use_awaitable, ec));
        uint64_t left = resp.stream_length;
        std::string piece;
        while (!ec && left > 0) {
          piece.clear();
          Status st = resp.stream(&piece);
          if (!st.ok() || piece.empty() || piece.size() > left) {
            spdlog::error("{} {}: aborting the response after {} of {} bytes: {}", r.method, r.path,
                          resp.stream_length - left, resp.stream_length,
                          st.ok() ? "body shorter than announced" : st.ToString());
            ec = net::error::operation_aborted;
            resp.status = 500;
            break;
          }
          left -= piece.size();
          bytes_out += piece.size();
          co_await net::async_write(stream, net::buffer(piece), net::redirect_error(net::use_awaitable, ec));
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
  }

  net::awaitable<void> AcceptLoop() {
    for (;;) {
      beast::error_code ec;
      tcp::socket socket = co_await acceptor.async_accept(net::redirect_error(net::use_awaitable, ec));
      if (ec == net::error::operation_aborted) co_return;
      if (ec) {
        // Out of file descriptors, most likely: wait a little instead of spinning.
        spdlog::warn("accept failed: {}", ec.message());
        net::steady_timer t(ioc, std::chrono::milliseconds(50));
        co_await t.async_wait(net::redirect_error(net::use_awaitable, ec));
        continue;
      }
      socket.set_option(tcp::no_delay(true), ec);
      net::co_spawn(ioc, Session(std::move(socket)), net::detached);
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
  net::co_spawn(impl_->ioc, impl_->AcceptLoop(), net::detached);
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back([this] { impl_->ioc.run(); });
  impl_->ioc.run();
  for (auto& t : pool) t.join();
}

void HttpServer::Stop() { impl_->ioc.stop(); }

}  // namespace tidefs
