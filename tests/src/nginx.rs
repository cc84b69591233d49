//! A real nginx on loopback, unprivileged (`nginx -p DIR -c FILE`), with
//! locations that answer fixed status codes and an access log whose format
//! the tests parse: `<status> <tenant header or -> <method> <uri>`.
//!
//! Locations: `/ok`, `/created`, `/missing`, `/error`, `/unavailable`, `/`;
//! `/status/<code>` for the codes in [`STATUS_CODES`]; `/big`, a 1 MiB static
//! file (written in several writes: sendfile is off unless the extra `http`
//! directives of [`Nginx::start_tuned`] turn it on); `/chunked`, a static
//! file gzipped on the fly, so chunked when the request has
//! `Accept-Encoding: gzip`; `/close` closes the connection without an
//! answer (`return 444`: logged as 444).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{free_port, wait_for};

/// Codes `/status/<code>` answers (nginx's `return` needs a literal code).
pub const STATUS_CODES: &[u16] = &[
    200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 409, 418, 429, 500, 502, 503, 504,
];

pub struct Nginx {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start() -> Nginx {
        Nginx::start_tuned(
            "worker_processes 1;",
            "events { worker_connections 1024; }",
            "",
            "",
        )
    }

    /// nginx with its own main-context directives (`worker_processes` among
    /// them), its own `events` block,
    /// extra `http` directives and extra `listen` parameters (for hostile and
    /// connection-count tests).
    pub fn start_tuned(main: &str, events: &str, http: &str, listen: &str) -> Nginx {
        Nginx::start_full(main, events, http, listen, false)
    }

    /// [`Nginx::start`], listening on `[::1]` too, same port (IPv6 tests).
    pub fn start_dual_stack() -> Nginx {
        Nginx::start_full(
            "worker_processes 1;",
            "events { worker_connections 1024; }",
            "",
            "",
            true,
        )
    }

    fn start_full(main: &str, events: &str, http: &str, listen: &str, ipv6: bool) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let status_locations: String = STATUS_CODES
            .iter()
            .map(|c| format!("    location = /status/{c} {{ return {c} \"status {c}\\n\"; }}\n"))
            .collect();
        std::fs::write(dir.path().join("big.txt"), vec![b'x'; 1 << 20]).unwrap();
        let chunked: String = (0..4000)
            .map(|i| format!("line {i} of the chunked body\n"))
            .collect();
        std::fs::write(dir.path().join("chunked.txt"), chunked).unwrap();
        let listen6 = if ipv6 {
            format!("listen [::1]:{port} {listen};")
        } else {
            String::new()
        };
        // nginx refuses a directive given twice.
        let sendfile = if http.contains("sendfile") {
            ""
        } else {
            "sendfile off;"
        };
        let conf = format!(
            r#"
{main}
daemon on;
error_log {d}/error.log;
pid {d}/nginx.pid;
{events}
http {{
  {http}
  log_format tenants '$status $http_x_tenant_id $request_method $uri';
  access_log {d}/access.log tenants;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 100000;
  keepalive_timeout 600s;  # agents load slowly on a busy machine; pooled connections must outlive that
  {sendfile}
  server {{
    listen 127.0.0.1:{port} {listen};
    {listen6}
    location = /ok {{ return 200 "ok\n"; }}
    location = /created {{ return 201 "created\n"; }}
    location = /missing {{ return 404 "missing\n"; }}
    location = /error {{ return 500 "error\n"; }}
    location = /unavailable {{ return 503 "unavailable\n"; }}
    location / {{ return 200 "root\n"; }}
    location = /close {{ return 444; }}
{status_locations}
    location = /big {{ default_type text/plain; alias {d}/big.txt; }}
    location = /chunked {{
      default_type text/plain;
      alias {d}/chunked.txt;
      gzip on;
      gzip_types text/plain;
      gzip_min_length 1;
    }}
  }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let status = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .status()
            .expect("nginx is installed (cargo xtask setup)");
        assert!(status.success(), "nginx failed to start");
        let up = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "nginx did not listen on {port}");
        Nginx { port, dir }
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// nginx's error log, for failure messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Lines of the access log.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.access_log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Requests per (tenant, status code), from nginx's own log. A missing
    /// header (`-`) is reported as `missing`.
    pub fn counts(&self, missing: &str) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for line in self.access_log() {
            let mut f = line.split(' ');
            let status = f.next().unwrap().to_string();
            let tenant = match f.next().unwrap() {
                "-" | "" => missing.to_string(),
                t => t.to_string(),
            };
            *out.entry((tenant, status)).or_insert(0) += 1;
        }
        out
    }

    /// (good, bad) per tenant from nginx's own log, as an availability SLO
    /// counts them: 5xx (and unanswered) are bad.
    pub fn slo_events(&self, missing: &str) -> BTreeMap<String, (u64, u64)> {
        slo_events(&self.counts(missing))
    }

    /// Waits until the access log holds `n` lines.
    pub fn wait_for_log_lines(&self, n: usize) {
        let got = wait_for(Duration::from_secs(10), || {
            (self.access_log().len() >= n).then_some(())
        });
        assert!(
            got.is_some(),
            "nginx logged {} of {n} requests",
            self.access_log().len()
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.path().join("nginx.pid")).unwrap_or_default();
        if std::thread::panicking() {
            eprintln!(
                "nginx on port {} (pid {}), error log:\n{}",
                self.port,
                pid.trim(),
                self.error_log()
            );
        }
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let _ = wait_for(Duration::from_secs(5), || {
                (!PathBuf::from(format!("/proc/{pid}")).exists()).then_some(())
            });
        }
    }
}

/// (good, bad) per tenant of per-(tenant, status) counts (see
/// [`Nginx::counts`]): 5xx (and unanswered, `000`) are bad.
pub fn slo_events(counts: &BTreeMap<(String, String), u64>) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for ((tenant, status), n) in counts {
        let e = out.entry(tenant.clone()).or_insert((0, 0));
        if status.starts_with('5') || status == "000" {
            e.1 += n;
        } else {
            e.0 += n;
        }
    }
    out
}
