//! A real nginx on loopback, unprivileged (`nginx -p DIR -c FILE`), with
//! locations that answer fixed status codes and an access log whose format
//! the tests parse: `<status> <tenant header or -> <method> <uri>`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{free_port, wait_for};

pub struct Nginx {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start() -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"
worker_processes 1;
daemon on;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  log_format tenants '$status $http_x_tenant_id $request_method $uri';
  access_log {d}/access.log tenants;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port};
    location = /ok {{ return 200 "ok\n"; }}
    location = /created {{ return 201 "created\n"; }}
    location = /missing {{ return 404 "missing\n"; }}
    location = /error {{ return 500 "error\n"; }}
    location = /unavailable {{ return 503 "unavailable\n"; }}
    location / {{ return 200 "root\n"; }}
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
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let _ = wait_for(Duration::from_secs(5), || {
                (!PathBuf::from(format!("/proc/{pid}")).exists()).then_some(())
            });
        }
    }
}
