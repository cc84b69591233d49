# A Rack app for puma in burnwatch's end-to-end tests (real_servers):
# puma -b tcp://127.0.0.1:PORT rack_app.ru, with the environment variable
# REQUEST_LOG naming the request log.
#
# Every request's body is read to its end, then one line
# `<status> <X-Tenant-ID or -> <method> <path>` is appended to the log
# (flushed, under a lock) just before the response goes out.
#
# Paths: /status/<code> answers <code>; / answers 200; anything else 404.
log = File.open(ENV.fetch("REQUEST_LOG"), "a")
log.sync = true
lock = Mutex.new

run(lambda do |env|
  env["rack.input"]&.read
  path = env["PATH_INFO"]
  code = if (m = %r{\A/status/([1-5][0-9][0-9])\z}.match(path))
           m[1].to_i
         elsif path == "/"
           200
         else
           404
         end
  tenant = env["HTTP_X_TENANT_ID"]
  tenant = "-" if tenant.nil? || tenant.empty?
  lock.synchronize { log.write("#{code} #{tenant} #{env["REQUEST_METHOD"]} #{path}\n") }
  out = "status #{code}\n"
  [code, { "content-type" => "text/plain", "content-length" => out.bytesize.to_s }, [out]]
end)
