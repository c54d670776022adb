#include "client/event_stream.h"

#include <chrono>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <boost/beast/websocket.hpp>
#include <spdlog/spdlog.h>

#include "core/logging.h"

namespace tidefs {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

namespace {

// The largest message a server may send (a commit event carries at most
// 64 KiB of records; hello carries every device's progress).
constexpr size_t kMaxServerMessage = 4 << 20;

struct Endpoint {
  std::string host, port, target_prefix;
};

bool ParseServer(const std::string& url, Endpoint* ep) {
  std::string_view u(url);
  if (!u.starts_with("http://")) return false;
  u.remove_prefix(7);
  size_t slash = u.find('/');
  std::string_view hostport = u.substr(0, slash);
  std::string_view prefix = slash == std::string_view::npos ? std::string_view() : u.substr(slash);
  while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
  size_t colon = hostport.rfind(':');
  if (colon == std::string_view::npos || hostport.empty()) {
    ep->host = std::string(hostport);
    ep->port = "80";
  } else {
    ep->host = std::string(hostport.substr(0, colon));
    ep->port = std::string(hostport.substr(colon + 1));
  }
  if (ep->host.size() > 2 && ep->host.front() == '[' && ep->host.back() == ']') ep->host = ep->host.substr(1, ep->host.size() - 2);
  ep->target_prefix = std::string(prefix);
  return !ep->host.empty() && !ep->port.empty();
}

}  // namespace

struct EventStream::Impl {
  ClientOptions opts;
  Callbacks cb;
  net::io_context ioc;
  std::thread thread;
  std::atomic<bool> up{false};
  std::atomic<bool> stopping{false};
  // The socket of the current connection, for Send and Stop (used on the
  // io thread only).
  websocket::stream<beast::tcp_stream>* ws = nullptr;
  std::deque<std::string> outbox;  // io thread only
  bool writing = false;            // io thread only

  net::awaitable<void> Flush() {
    if (writing) co_return;
    writing = true;
    while (ws && !outbox.empty()) {
      std::string m = std::move(outbox.front());
      outbox.pop_front();
      beast::error_code ec;
      co_await ws->async_write(net::buffer(m), net::redirect_error(net::use_awaitable, ec));
      if (ec) break;
    }
    writing = false;
  }

  // One connection, until it breaks. Returns why it ended.
  net::awaitable<std::string> Connect(const Endpoint& ep) {
    beast::error_code ec;
    tcp::resolver resolver(ioc);
    auto found = co_await resolver.async_resolve(ep.host, ep.port, net::redirect_error(net::use_awaitable, ec));
    if (ec) co_return "cannot resolve " + ep.host + ": " + ec.message();
    websocket::stream<beast::tcp_stream> s(ioc);
    beast::get_lowest_layer(s).expires_after(std::chrono::milliseconds(opts.connect_timeout_ms));
    co_await beast::get_lowest_layer(s).async_connect(found, net::redirect_error(net::use_awaitable, ec));
    if (ec) co_return "cannot connect to " + ep.host + ":" + ep.port + ": " + ec.message();
    beast::get_lowest_layer(s).socket().set_option(tcp::no_delay(true), ec);
    beast::get_lowest_layer(s).expires_never();
    websocket::stream_base::timeout opt{std::chrono::milliseconds(opts.connect_timeout_ms), std::chrono::seconds(30), true};
    s.set_option(opt);
    s.read_message_max(kMaxServerMessage);
    std::string auth = "Bearer " + opts.token;
    s.set_option(websocket::stream_base::decorator([auth](websocket::request_type& req) {
      req.set(http::field::authorization, auth);
      req.set(http::field::user_agent, "tidefs");
    }));
    std::string target = ep.target_prefix + "/v1/projects/" + ApiClient::UrlEncode(opts.project) + "/events";
    websocket::response_type res;
    co_await s.async_handshake(res, ep.host + ":" + ep.port, target, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      std::string why = "WebSocket handshake with " + opts.server + " failed: " + ec.message();
      if (res.result_int() != 0 && res.result_int() != 101) why += " (HTTP " + std::to_string(res.result_int()) + " " + res.body() + ")";
      co_return why;
    }
    s.text(true);
    ws = &s;
    up = true;
    if (cb.on_state) cb.on_state(true, "");
    beast::flat_buffer buf;
    std::string why;
    while (!stopping) {
      buf.clear();
      co_await s.async_read(buf, net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        why = ec == websocket::error::closed ? "the server closed the connection (" + std::string(s.reason().reason.data(), s.reason().reason.size()) + ")"
                                             : "connection lost: " + ec.message();
        break;
      }
      if (!s.got_text()) {
        why = "the server sent a binary message";
        break;
      }
      if (cb.on_message) {
        Status st = cb.on_message(std::string_view(static_cast<const char*>(buf.data().data()), buf.size()));
        if (!st.ok()) {
          why = "closed after a bad message from the server: " + st.message();
          spdlog::warn("events: {}", why);
          beast::get_lowest_layer(s).expires_after(std::chrono::seconds(2));
          co_await s.async_close(websocket::close_reason(websocket::close_code::policy_error),
                                 net::redirect_error(net::use_awaitable, ec));
          break;
        }
      }
    }
    up = false;
    ws = nullptr;
    outbox.clear();
    // Any write still pending must finish before `s` goes.
    beast::get_lowest_layer(s).close();
    while (writing) {
      net::steady_timer t(ioc, std::chrono::milliseconds(1));
      co_await t.async_wait(net::redirect_error(net::use_awaitable, ec));
    }
    co_return why;
  }

  net::awaitable<void> Run() {
    Endpoint ep;
    if (!ParseServer(opts.server, &ep)) {
      spdlog::error("events: server URL {} is not http://host:port; no live updates", opts.server);
      co_return;
    }
    std::mt19937_64 rng(std::random_device{}());
    auto delay = std::chrono::milliseconds(100);
    while (!stopping) {
      auto t0 = std::chrono::steady_clock::now();
      std::string why = co_await Connect(ep);
      if (stopping) break;
      if (cb.on_state) cb.on_state(false, why);
      // A connection that lived a while starts the backoff afresh.
      if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(10)) delay = std::chrono::milliseconds(100);
      std::uniform_int_distribution<int64_t> jitter(delay.count() / 2, delay.count() * 3 / 2);
      net::steady_timer t(ioc, std::chrono::milliseconds(jitter(rng)));
      beast::error_code ec;
      co_await t.async_wait(net::redirect_error(net::use_awaitable, ec));
      delay = std::min(delay * 2, std::chrono::milliseconds(5000));
    }
  }
};

EventStream::EventStream(ClientOptions opts, Callbacks cb) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->cb = std::move(cb);
}

EventStream::~EventStream() { Stop(); }

void EventStream::Start() {
  if (impl_->thread.joinable()) return;
  net::co_spawn(impl_->ioc, impl_->Run(), net::detached);
  impl_->thread = std::thread([this] {
    NameThread("tidefs-events");
    impl_->ioc.run();
  });
}

void EventStream::Stop() {
  if (!impl_->thread.joinable()) return;
  impl_->stopping = true;
  impl_->ioc.stop();
  impl_->thread.join();
}

bool EventStream::Send(std::string msg) {
  if (!impl_->up) return false;
  Impl* im = impl_.get();
  net::post(im->ioc, [im, m = std::move(msg)]() mutable {
    if (!im->ws) return;
    im->outbox.push_back(std::move(m));
    net::co_spawn(im->ioc, im->Flush(), net::detached);
  });
  return true;
}

bool EventStream::connected() const { return impl_->up; }

}  // namespace tidefs
