//! The servers and proxies people run, from Debian's packages and PyPI, on
//! loopback with their OWN request logs in the harness' format
//! (`<status> <tenant or -> <method> <path>`, see [`Server`]):
//!
//! - Apache 2.4 with mpm_event or mpm_prefork (`CustomLog`);
//! - Varnish 7.1 in front of a backend (`varnishncsa -c`: its client side);
//! - haproxy 2.6 in front of a backend (its `log-format`, on stdout);
//! - lighttpd (`mod_accesslog`, through a piped logger: its file log is
//!   only flushed at exit);
//! - gunicorn with sync or gthread workers (`tests/servers/wsgi_app.py`);
//! - uvicorn with `--http h11` or `--http httptools`
//!   (`tests/servers/asgi_app.py`);
//! - PHP's built-in server `php -S` (`tests/servers/php_router.php`);
//! - Ruby: WEBrick (`tests/servers/webrick_server.rb`) and puma
//!   (`tests/servers/rack_app.ru`);
//! - Caddy 2.6 (its JSON access log, converted by [`RealServer::log_lines`]);
//! - h2o 2.2 (its `access-log`, mruby for the status codes).
//!
//! Every server answers `/` with 200 and `/status/404` with 404; and
//! `/status/<code>` with that code where the server can without app code
//! (Apache: mod_rewrite `R=` for [`APACHE_CODES`]; Caddy: [`CADDY_CODES`];
//! h2o: any code, from mruby; lighttpd: 403 only, by mod_access) and
//! everywhere in the app servers (any code). Elsewhere `/status/<code>` is
//! a missing file: 404. The app servers read every request body to its end
//! and write their log line just before the response goes out; the others
//! log as they do in production, after the response.
//!
//! Each server runs in a process group of its own, with its config files in
//! a temporary directory; dropping the handle ends the whole group (SIGTERM,
//! then SIGKILL), forked workers included.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::servers::Server;
use crate::{wait_for, workspace_root};

/// Codes Apache's `/status/<code>` answers (mod_rewrite's `R=` flag; 200 is
/// a rewrite to the index file).
pub const APACHE_CODES: &[u16] = &[200, 400, 403, 404, 410, 429, 500, 502, 503];
/// Codes Caddy's `/status/<code>` answers (`respond`).
pub const CADDY_CODES: &[u16] = &[200, 201, 404, 418, 500, 503];

/// Which Apache multi-processing module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mpm {
    Event,
    Prefork,
}

/// Which gunicorn worker class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GunicornWorker {
    /// `-k sync`: one request per connection (`Connection: close`).
    Sync,
    /// `-k gthread`: threads, keep-alive.
    Gthread,
}

/// Which uvicorn HTTP implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UvicornHttp {
    H11,
    Httptools,
}

/// How a server's log is turned into the harness' lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Already `<status> <tenant or -> <method> <path>`.
    Lines,
    /// Caddy's JSON access log, one object per line.
    CaddyJson,
}

/// A real server (and its helpers: varnishncsa, lighttpd's piped logger),
/// stopped with its whole process group on drop.
pub struct RealServer {
    kind: &'static str,
    pub port: u16,
    /// Process-group leaders: the server first, helpers after.
    procs: Vec<Child>,
    log: PathBuf,
    format: LogFormat,
    /// Files whose text [`Server::diagnostics`] shows.
    diag: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

/// Fails the test loudly when `program` is not on the PATH.
pub fn require_program(program: &str, install: &str) {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|d| std::fs::metadata(d.join(program)).is_ok_and(|m| m.is_file()))
    });
    assert!(
        found,
        "`{program}` is not installed: these tests need it ({install}; cargo xtask setup installs it)"
    );
}

/// Fails the test loudly when `python3` cannot import `module`.
pub fn require_python_module(module: &str, install: &str) {
    require_program("python3", "apt-get install -y python3");
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the Python module `{module}` is not installed: these tests need it ({install}; \
         cargo xtask setup installs it)"
    );
}

fn servers_dir() -> PathBuf {
    workspace_root().join("tests/servers")
}

/// A temporary directory others can traverse and read (servers that drop
/// privileges to www-data read their document root there).
fn open_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let docs = dir.path().join("htdocs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::set_permissions(&docs, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(docs.join("index.html"), "index\n").unwrap();
    dir
}

/// Starts `cmd` as the leader of a new process group, its stdin closed,
/// stdout and stderr into `out` (and stdout into `stdout` when given).
fn spawn(cmd: &mut Command, out: &Path, stdout: Option<&Path>, what: &str) -> Child {
    let err = File::create(out).unwrap();
    let so = match stdout {
        Some(p) => File::create(p).unwrap(),
        None => err.try_clone().unwrap(),
    };
    cmd.stdin(Stdio::null())
        .stdout(so)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"))
}

impl RealServer {
    fn new(
        kind: &'static str,
        port: u16,
        dir: tempfile::TempDir,
        log: &str,
        format: LogFormat,
    ) -> RealServer {
        let log = dir.path().join(log);
        RealServer {
            kind,
            port,
            procs: Vec::new(),
            log,
            format,
            diag: Vec::new(),
            dir,
        }
    }

    /// The server's directory (configs, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's main process (its process group's id).
    pub fn pid(&self) -> u32 {
        self.procs[0].id()
    }

    /// Every process of the server's process groups (workers included), for
    /// tracing.
    pub fn pids(&self) -> Vec<u32> {
        let groups: Vec<u32> = self.procs.iter().map(Child::id).collect();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // /proc/<pid>/stat: pid (comm) state ppid pgrp ...; comm may hold spaces.
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|p| p.parse::<u32>().ok());
            if pgrp.is_some_and(|g| groups.contains(&g)) {
                out.push(pid);
            }
        }
        out.sort_unstable();
        out
    }

    /// Sends `GET /` with tenant `warmup` (a fresh connection each, once in
    /// 300 ms) until the server's log shows a new line: its logger runs
    /// (varnishncsa attaches to varnishd a while after starting). Panics
    /// after 30 s.
    pub fn wait_logging(&self) {
        let before = self.log_lines().len();
        let logged = wait_for(Duration::from_secs(30), || {
            let mut c = crate::client::Conn::open(self.port);
            c.send(&crate::client::Req::get("/").tenant(Some("warmup")).bytes());
            let _ = c.try_read_response(false);
            drop(c);
            std::thread::sleep(Duration::from_millis(300));
            (self.log_lines().len() > before).then_some(())
        });
        assert!(
            logged.is_some(),
            "{} logged no request in 30 s:\n{}",
            self.kind,
            self.diagnostics()
        );
    }

    /// Starts `cmd` (the server, or a helper when the server already runs),
    /// its output into `<name>.out`.
    fn launch(&mut self, cmd: &mut Command, name: &str) {
        let out = self.dir.path().join(format!("{name}.out"));
        let child = spawn(cmd, &out, None, name);
        self.diag.push(out);
        self.procs.push(child);
    }

    /// Waits (30 s at most) until the port accepts; panics with the
    /// diagnostics when a process exited or nothing listens.
    fn wait_listening(&mut self) {
        let port = self.port;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            for c in &mut self.procs {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "{} (pid {}) exited with {status} before listening on {port}:\n{}",
                        self.kind,
                        c.id(),
                        self.diagnostics()
                    );
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < end,
                "{} did not listen on 127.0.0.1:{port} in 30 s:\n{}",
                self.kind,
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Apache httpd 2.4 (`apache2 -DFOREGROUND`) with `mpm`, mod_rewrite for
    /// `/status/<code>` ([`APACHE_CODES`]), keep-alive without a request
    /// limit; workers run as www-data.
    pub fn apache(mpm: Mpm, port: u16) -> RealServer {
        require_program("apache2", "apt-get install -y apache2");
        let dir = open_tempdir();
        let d = dir.path().display().to_string();
        let (kind, mpm_conf) = match mpm {
            Mpm::Event => (
                "apache-event",
                "LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n\
                 StartServers 1\nServerLimit 2\nThreadsPerChild 16\nMaxRequestWorkers 32\n\
                 MinSpareThreads 4\nMaxSpareThreads 32\n",
            ),
            Mpm::Prefork => (
                "apache-prefork",
                "LoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so\n\
                 StartServers 4\nMinSpareServers 2\nMaxSpareServers 8\nMaxRequestWorkers 32\n",
            ),
        };
        let rewrites: String = APACHE_CODES
            .iter()
            .map(|c| match c {
                200 => "RewriteRule ^/status/200$ /index.html [L]\n".to_string(),
                c => format!("RewriteRule ^/status/{c}$ - [R={c}]\n"),
            })
            .collect();
        let conf = format!(
            r#"ServerRoot {d}
DefaultRuntimeDir {d}
PidFile {d}/httpd.pid
{mpm_conf}
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule rewrite_module /usr/lib/apache2/modules/mod_rewrite.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so
TypesConfig /etc/mime.types
User www-data
Group www-data
Listen 127.0.0.1:{port}
ServerName localhost
ErrorLog {d}/error.log
LogLevel warn
LogFormat "%>s %{{X-Tenant-ID}}i %m %U" tenants
CustomLog {d}/access.log tenants
DocumentRoot {d}/htdocs
DirectoryIndex index.html
Timeout 60
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 60
<Directory />
  Require all granted
</Directory>
RewriteEngine On
{rewrites}"#
        );
        let conf_path = dir.path().join("httpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut s = RealServer::new(kind, port, dir, "access.log", LogFormat::Lines);
        s.diag.push(s.dir.path().join("error.log"));
        s.launch(
            Command::new("apache2")
                .arg("-f")
                .arg(&conf_path)
                .arg("-DFOREGROUND"),
            "apache2",
        );
        s.wait_listening();
        s
    }

    /// Varnish 7.1 in front of `127.0.0.1:<backend>`, every request passed
    /// (never cached: each is a backend request too). Its log is
    /// `varnishncsa -c` (the client side), which logs only what happens
    /// after it attached: [`RealServer::wait_logging`] before counting.
    pub fn varnish(port: u16, backend: u16) -> RealServer {
        require_program("varnishd", "apt-get install -y varnish");
        require_program("varnishncsa", "apt-get install -y varnish");
        let dir = open_tempdir();
        let vcl = dir.path().join("default.vcl");
        std::fs::write(
            &vcl,
            format!(
                "vcl 4.1;\n\
                 backend default {{ .host = \"127.0.0.1\"; .port = \"{backend}\"; }}\n\
                 sub vcl_recv {{ return (pass); }}\n"
            ),
        )
        .unwrap();
        let work = dir.path().join("varnish");
        let mut s = RealServer::new("varnish", port, dir, "access.log", LogFormat::Lines);
        s.launch(
            Command::new("varnishd")
                .args(["-F", "-j", "none", "-T", "none", "-n"])
                .arg(&work)
                .arg("-a")
                .arg(format!("127.0.0.1:{port}"))
                .arg("-f")
                .arg(&vcl)
                .args([
                    "-s",
                    "malloc,32m",
                    "-p",
                    "thread_pools=1",
                    "-p",
                    "thread_pool_min=8",
                ]),
            "varnishd",
        );
        s.wait_listening();
        let log = s.log.clone();
        s.launch(
            Command::new("varnishncsa")
                .arg("-n")
                .arg(&work)
                .args(["-c", "-t", "30", "-F", "%s %{X-Tenant-ID}i %m %U", "-w"])
                .arg(&log),
            "varnishncsa",
        );
        s
    }

    /// haproxy 2.6 in front of `127.0.0.1:<backend>` (HTTP mode, keep-alive
    /// both sides), logging `%ST <X-Tenant-ID capture> %HM %HPO` to stdout.
    pub fn haproxy(port: u16, backend: u16) -> RealServer {
        require_program("haproxy", "apt-get install -y haproxy");
        let dir = open_tempdir();
        let conf = format!(
            r#"global
  log stdout format raw local0
  maxconn 1000
  # With several threads, a log line whose thread finds the stdout sink
  # busy is dropped (a dozen in a wrk run): one thread logs every line.
  nbthread 1
defaults
  mode http
  log global
  # As Debian's own haproxy.cfg: connections that sent nothing (readiness
  # probes, clients' spare connections) are not logged as `<BADREQ>` 400.
  option dontlognull
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-request 30s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:{port}
  http-request capture req.hdr(X-Tenant-ID) len 64
  log-format "%ST %[capture.req.hdr(0)] %HM %HPO"
  default_backend be
backend be
  server nginx 127.0.0.1:{backend}
"#
        );
        let conf_path = dir.path().join("haproxy.cfg");
        std::fs::write(&conf_path, conf).unwrap();
        let mut s = RealServer::new("haproxy", port, dir, "access.log", LogFormat::Lines);
        let err = s.dir.path().join("haproxy.err");
        let child = spawn(
            Command::new("haproxy").arg("-db").arg("-f").arg(&conf_path),
            &err,
            Some(&s.log.clone()),
            "haproxy",
        );
        s.diag.push(err);
        s.procs.push(child);
        s.wait_listening();
        s
    }

    /// lighttpd 1.4: static files (`/`, `/status/200` rewritten to the
    /// index), `/status/403` denied by mod_access, anything else 404.
    pub fn lighttpd(port: u16) -> RealServer {
        require_program("lighttpd", "apt-get install -y lighttpd");
        let dir = open_tempdir();
        let d = dir.path().display().to_string();
        let conf = format!(
            r#"server.document-root = "{d}/htdocs"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{d}/error.log"
server.pid-file = "{d}/lighttpd.pid"
server.modules = ("mod_access", "mod_accesslog", "mod_rewrite")
index-file.names = ("index.html")
mimetype.assign = (".html" => "text/html")
# A file log is flushed only when lighttpd exits; a piped logger per line.
accesslog.filename = "|/bin/cat >> {d}/access.log"
accesslog.format = "%>s %{{X-Tenant-ID}}i %m %U"
server.max-keep-alive-requests = 100000
server.max-keep-alive-idle = 60
$HTTP["url"] =~ "^/status/403$" {{ url.access-deny = ("") }}
url.rewrite-once = ("^/status/200$" => "/index.html")
"#
        );
        let conf_path = dir.path().join("lighttpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut s = RealServer::new("lighttpd", port, dir, "access.log", LogFormat::Lines);
        s.diag.push(s.dir.path().join("error.log"));
        s.launch(
            Command::new("lighttpd").arg("-D").arg("-f").arg(&conf_path),
            "lighttpd",
        );
        s.wait_listening();
        s
    }

    /// gunicorn (PyPI) with `tests/servers/wsgi_app.py`: two sync workers,
    /// or one gthread worker with four threads.
    pub fn gunicorn(worker: GunicornWorker, port: u16) -> RealServer {
        require_python_module("gunicorn", "pip install gunicorn==23.0.0");
        let dir = open_tempdir();
        let (kind, args): (&'static str, &[&str]) = match worker {
            GunicornWorker::Sync => ("gunicorn-sync", &["-k", "sync", "-w", "2"]),
            GunicornWorker::Gthread => (
                "gunicorn-gthread",
                &["-k", "gthread", "-w", "1", "--threads", "4"],
            ),
        };
        let mut s = RealServer::new(kind, port, dir, "requests.log", LogFormat::Lines);
        std::fs::write(&s.log, "").unwrap();
        let log = s.log.clone();
        s.launch(
            Command::new("python3")
                .args(["-m", "gunicorn", "-b"])
                .arg(format!("127.0.0.1:{port}"))
                .args(args)
                .args(["--keep-alive", "60", "--graceful-timeout", "1", "--chdir"])
                .arg(servers_dir())
                .arg("wsgi_app:app")
                .env("REQUEST_LOG", &log),
            "gunicorn",
        );
        s.wait_listening();
        s
    }

    /// uvicorn (PyPI) with `tests/servers/asgi_app.py` on `http`.
    pub fn uvicorn(http: UvicornHttp, port: u16) -> RealServer {
        require_python_module("uvicorn", "pip install uvicorn==0.34.3");
        let (kind, impl_name) = match http {
            UvicornHttp::H11 => {
                require_python_module("h11", "pip install h11==0.16.0");
                ("uvicorn-h11", "h11")
            }
            UvicornHttp::Httptools => {
                require_python_module("httptools", "pip install httptools==0.6.4");
                ("uvicorn-httptools", "httptools")
            }
        };
        let dir = open_tempdir();
        let mut s = RealServer::new(kind, port, dir, "requests.log", LogFormat::Lines);
        std::fs::write(&s.log, "").unwrap();
        let log = s.log.clone();
        s.launch(
            Command::new("python3")
                .args(["-m", "uvicorn", "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--http", impl_name, "--no-access-log", "--log-level"])
                .args(["warning", "--timeout-keep-alive", "60", "--app-dir"])
                .arg(servers_dir())
                .arg("asgi_app:app")
                .env("REQUEST_LOG", &log),
            "uvicorn",
        );
        s.wait_listening();
        s
    }

    /// PHP's built-in server (`php -S`, four forked workers) with
    /// `tests/servers/php_router.php`.
    pub fn php(port: u16) -> RealServer {
        require_program("php", "apt-get install -y php-cli");
        let dir = open_tempdir();
        let mut s = RealServer::new("php-builtin", port, dir, "requests.log", LogFormat::Lines);
        std::fs::write(&s.log, "").unwrap();
        let log = s.log.clone();
        s.launch(
            Command::new("php")
                .arg("-S")
                .arg(format!("127.0.0.1:{port}"))
                .arg(servers_dir().join("php_router.php"))
                .env("REQUEST_LOG", &log)
                .env("PHP_CLI_SERVER_WORKERS", "4"),
            "php",
        );
        s.wait_listening();
        s
    }

    /// Ruby's WEBrick (ruby-webrick) with `tests/servers/webrick_server.rb`.
    pub fn webrick(port: u16) -> RealServer {
        require_program("ruby", "apt-get install -y ruby ruby-webrick");
        let ok = Command::new("ruby")
            .args(["-e", "require 'webrick'"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "Ruby's webrick is not installed (apt-get install -y ruby-webrick; cargo xtask setup installs it)"
        );
        let dir = open_tempdir();
        let mut s = RealServer::new("webrick", port, dir, "requests.log", LogFormat::Lines);
        std::fs::write(&s.log, "").unwrap();
        let log = s.log.clone();
        s.launch(
            Command::new("ruby")
                .arg(servers_dir().join("webrick_server.rb"))
                .arg(port.to_string())
                .arg(&log),
            "webrick",
        );
        s.wait_listening();
        s
    }

    /// puma (Debian's `puma`), single mode with four threads, with
    /// `tests/servers/rack_app.ru`.
    pub fn puma(port: u16) -> RealServer {
        require_program("puma", "apt-get install -y puma");
        let dir = open_tempdir();
        let mut s = RealServer::new("puma", port, dir, "requests.log", LogFormat::Lines);
        std::fs::write(&s.log, "").unwrap();
        let log = s.log.clone();
        s.launch(
            Command::new("puma")
                .arg("-b")
                .arg(format!("tcp://127.0.0.1:{port}"))
                .args(["-t", "4:4"])
                .arg(servers_dir().join("rack_app.ru"))
                .env("REQUEST_LOG", &log),
            "puma",
        );
        s.wait_listening();
        s
    }

    /// Caddy 2.6: `respond` for [`CADDY_CODES`], static files otherwise,
    /// HTTP/1 only, no admin endpoint; the JSON access log.
    pub fn caddy(port: u16) -> RealServer {
        require_program("caddy", "apt-get install -y caddy");
        let dir = open_tempdir();
        let d = dir.path().display().to_string();
        let responds: String = CADDY_CODES
            .iter()
            .map(|c| format!("  respond /status/{c} \"status {c}\" {c}\n"))
            .collect();
        let conf = format!(
            r#"{{
  admin off
  auto_https off
  storage file_system {d}/storage
  servers {{
    protocols h1
  }}
}}
# Any Host header: a site address with a host leaves requests for other
# hosts to an empty default answer that this log does not record.
http://:{port} {{
  bind 127.0.0.1
  log {{
    output file {d}/access.json
    format json
  }}
{responds}  root * {d}/htdocs
  file_server
}}
"#
        );
        let conf_path = dir.path().join("Caddyfile");
        std::fs::write(&conf_path, conf).unwrap();
        let home = dir.path().join("home");
        let mut s = RealServer::new("caddy", port, dir, "access.json", LogFormat::CaddyJson);
        s.launch(
            Command::new("caddy")
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&conf_path)
                .env("HOME", &home)
                .env("XDG_DATA_HOME", home.join("data"))
                .env("XDG_CONFIG_HOME", home.join("config")),
            "caddy",
        );
        s.wait_listening();
        s
    }

    /// h2o 2.2: static files, `/status/<code>` from mruby (any code).
    pub fn h2o(port: u16) -> RealServer {
        require_program("h2o", "apt-get install -y h2o");
        let dir = open_tempdir();
        let d = dir.path().display().to_string();
        let conf = format!(
            r#"user: root
listen:
  host: 127.0.0.1
  port: {port}
pid-file: {d}/h2o.pid
error-log: {d}/error.log
access-log:
  path: {d}/access.log
  format: "%s %{{X-Tenant-ID}}i %m %U"
http1-request-timeout: 60
num-threads: 2
hosts:
  default:
    paths:
      /status:
        mruby.handler: |
          Proc.new do |env|
            code = env["PATH_INFO"].sub(%r{{^/}}, "").to_i
            code = 200 if code < 200 || code > 599
            [code, {{"content-type" => "text/plain"}}, ["status #{{code}}\n"]]
          end
      /:
        file.dir: {d}/htdocs
"#
        );
        let conf_path = dir.path().join("h2o.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut s = RealServer::new("h2o", port, dir, "access.log", LogFormat::Lines);
        s.diag.push(s.dir.path().join("error.log"));
        s.launch(Command::new("h2o").arg("-c").arg(&conf_path), "h2o");
        s.wait_listening();
        s
    }
}

/// One line of Caddy's JSON access log as `<status> <tenant or -> <method>
/// <path>`; `None` for other lines.
fn caddy_line(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let status = v.get("status")?.as_u64()?;
    let req = v.get("request")?;
    let method = req.get("method")?.as_str()?;
    let uri = req.get("uri")?.as_str()?;
    let path = uri.split('?').next().unwrap_or(uri);
    // Go canonicalizes header names: X-Tenant-Id.
    let tenant = req
        .get("headers")
        .and_then(|h| h.as_object())
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-tenant-id"))
                .and_then(|(_, v)| v.get(0)?.as_str())
        })
        .filter(|t| !t.is_empty())
        .unwrap_or("-");
    Some(format!("{status} {tenant} {method} {path}"))
}

impl Server for RealServer {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn log_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // A line still being written has no newline yet.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        match self.format {
            LogFormat::Lines => complete.lines().map(str::to_string).collect(),
            LogFormat::CaddyJson => complete.lines().filter_map(caddy_line).collect(),
        }
    }
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for p in &self.diag {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            // The tail: some servers are chatty.
            let tail: String = text
                .chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            out.push_str(&format!("--- {} ({}):\n{tail}\n", self.kind, p.display()));
        }
        out
    }
}

/// Is any process left in process group `pgid`?
fn group_alive(pgid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(-(pgid as i32), 0) == 0 }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} on port {} (pid {}):\n{}",
                self.kind,
                self.port,
                self.pid(),
                self.diagnostics()
            );
        }
        // Helpers first (varnishncsa, ...), then the server; each group
        // gets SIGTERM, then SIGKILL after 3 s.
        for c in self.procs.iter().rev() {
            // SAFETY: kill(2) on a process group this handle started.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGTERM) };
        }
        let end = Instant::now() + Duration::from_secs(3);
        for c in self.procs.iter_mut().rev() {
            while Instant::now() < end && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: as above; forked workers that outlived their parent too.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        for c in &self.procs {
            let pgid = c.id();
            let _ = wait_for(Duration::from_secs(2), || {
                (!group_alive(pgid)).then_some(())
            });
        }
    }
}
