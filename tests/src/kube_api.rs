//! A stand-in Kubernetes API server on loopback that answers the agent's
//! pod and namespace watches with recorded API responses
//! (`agent/src/attribution/testdata/`, JSON exactly as the API returns
//! it): the lists are served, the watches that follow are held open with
//! no events, as an API server does when nothing changes.
//!
//! Written by hand (a few dozen lines of std): no crate serves canned
//! Kubernetes responses, and a real API server (etcd, kube-apiserver) is
//! far beyond what the join of pods to series needs to be tested for real.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct FakeApiServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl FakeApiServer {
    /// Serves `pods` (a PodList) and `namespaces` (a NamespaceList).
    pub fn start(pods: String, namespaces: String) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (pods, namespaces) = (Arc::new(pods), Arc::new(namespaces));
        let s = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (p, n, s) = (pods.clone(), namespaces.clone(), s.clone());
                std::thread::spawn(move || serve(conn, &p, &n, &s));
            }
        });
        FakeApiServer { port, stop }
    }

    /// A kubeconfig pointing at this server, written into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        kubeconfig(dir, self.port)
    }
}

/// A kubeconfig for an API server on 127.0.0.1:`port` (plain HTTP, a dummy
/// token), written into `dir`.
pub fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
             current-context: x\n"
        ),
    )
    .unwrap();
    path
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One keep-alive connection: lists answered, a watch held until stop.
fn serve(conn: TcpStream, pods: &str, namespaces: &str, stop: &AtomicBool) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        // Headers (the agent sends no request bodies on GET).
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
        }
        if path.contains("watch=") {
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
            }
            return;
        }
        let body = if path.starts_with("/api/v1/pods") {
            pods
        } else if path.starts_with("/api/v1/namespaces") {
            namespaces
        } else {
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#
        };
        let status = if body.contains(r#""code":404"#) {
            "404 Not Found"
        } else {
            "200 OK"
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
    }
}
