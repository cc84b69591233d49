# A WEBrick server for burnwatch's end-to-end tests (real_servers).
#
# Usage: ruby webrick_server.rb PORT LOG_PATH
#
# Every request's body is read to its end (Content-Length or chunked), then
# one line `<status> <X-Tenant-ID or -> <method> <path>` is appended to the
# log (flushed) just before the response goes out. WEBrick's own access log
# is off.
#
# Paths: /status/<code> answers <code>; / answers 200; anything else 404.
require "webrick"

port = Integer(ARGV.fetch(0))
LOG = File.open(ARGV.fetch(1), "a")
LOG.sync = true
LOCK = Mutex.new

class AnyMethod < WEBrick::HTTPServlet::AbstractServlet
  def service(req, res)
    req.body
    path = req.path
    code = if (m = %r{\A/status/([1-5][0-9][0-9])\z}.match(path))
             m[1].to_i
           elsif path == "/"
             200
           else
             404
           end
    tenant = req["X-Tenant-ID"]
    tenant = "-" if tenant.nil? || tenant.empty?
    LOCK.synchronize { LOG.write("#{code} #{tenant} #{req.request_method} #{path}\n") }
    res.status = code
    res["Content-Type"] = "text/plain"
    res.body = "status #{code}\n"
  end
end

server = WEBrick::HTTPServer.new(
  BindAddress: "127.0.0.1",
  Port: port,
  AccessLog: [],
  Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN),
  # The test's keep-alive clients pause between phases.
  KeepAliveTimeout: 60,
)
server.mount("/", AnyMethod)
trap("TERM") { server.shutdown }
server.start
