//! Real HTTP servers on loopback, each with its own request log in one
//! format: `<status> <tenant or -> <method> <path>` per answered request.
//!
//! - [`Nginx`](crate::nginx::Nginx): the access log.
//! - [`ScriptServer`]: Python's `http.server`, Node's `http` and Go's
//!   `net/http`, from the sources under `tests/servers/`, and a minimal
//!   Python server whose read and write syscalls are chosen
//!   ([`Kind::Syscalls`]). Each writes its log line (flushed) just before the
//!   response goes out.
//!
//! Every server answers `/status/<code>` with that code, `/big` with a 1 MiB
//! body in several writes and (but the syscall server) `/chunked` with a
//! chunked body (nginx: only with `Accept-Encoding: gzip`, see
//! [`crate::nginx`]). Python, Node and Go also have `/close` and `/reset`
//! (no answer: the connection is closed or reset; logged as status `000`)
//! and take the tenant from the Host header or the path with
//! `TENANT_FROM=host|path` ([`ScriptServer::start_with`]).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{free_port, wait_for, workspace_root};

/// Requests per (tenant, status code).
pub type Counts = BTreeMap<(String, String), u64>;
/// Requests per (tenant, method, status code).
pub type MethodCounts = BTreeMap<(String, String, String), u64>;

/// A running server whose own log says which requests it answered.
pub trait Server {
    /// What it is, for messages (`nginx`, `python`, `node`, `go`).
    fn kind(&self) -> &'static str;
    /// The TCP port it listens on (127.0.0.1).
    fn port(&self) -> u16;
    /// Lines of its request log: `<status> <tenant or -> <method> <path>`.
    fn log_lines(&self) -> Vec<String>;
    /// The server's stderr / error log, for failure messages.
    fn diagnostics(&self) -> String {
        String::new()
    }

    /// Requests per (tenant, status) from the server's own log; a missing
    /// tenant (`-`) is reported as `missing`.
    fn counts(&self, missing: &str) -> Counts {
        let mut out = Counts::new();
        for ((tenant, _method, status), n) in self.method_counts(missing) {
            *out.entry((tenant, status)).or_insert(0) += n;
        }
        out
    }

    /// Requests per (tenant, method, status) from the server's own log.
    fn method_counts(&self, missing: &str) -> MethodCounts {
        parse_log(&self.log_lines(), missing)
    }

    /// Waits (10 s at most) until the log holds at least `n` lines; panics
    /// with what it holds otherwise.
    fn wait_for_log_lines(&self, n: usize) {
        let got = wait_for(Duration::from_secs(10), || {
            (self.log_lines().len() >= n).then_some(())
        });
        assert!(
            got.is_some(),
            "{} logged {} of {n} requests:\n{}\n{}",
            self.kind(),
            self.log_lines().len(),
            self.log_lines().join("\n"),
            self.diagnostics()
        );
    }

    /// Waits until the log stops growing (no new line for `quiet`), for
    /// traffic whose size is not known in advance (wrk). Returns its length.
    fn wait_for_quiet_log(&self, quiet: Duration) -> usize {
        let end = Instant::now() + Duration::from_secs(20);
        let mut last = self.log_lines().len();
        let mut since = Instant::now();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            let n = self.log_lines().len();
            if n != last {
                last = n;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return n;
            }
        }
        panic!("{}'s log kept growing for 20 s", self.kind());
    }
}

/// Parses log lines `<status> <tenant> <method> <path>` into counts.
pub fn parse_log(lines: &[String], missing: &str) -> MethodCounts {
    let mut out = MethodCounts::new();
    for line in lines {
        let mut f = line.split(' ');
        let status = f.next().unwrap_or_default().to_string();
        let tenant = match f.next().unwrap_or_default() {
            "-" | "" => missing.to_string(),
            t => t.to_string(),
        };
        let method = f.next().unwrap_or_default().to_string();
        *out.entry((tenant, method, status)).or_insert(0) += 1;
    }
    out
}

impl Server for crate::nginx::Nginx {
    fn kind(&self) -> &'static str {
        "nginx"
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn log_lines(&self) -> Vec<String> {
        self.access_log()
    }
    fn diagnostics(&self) -> String {
        self.error_log()
    }
}

/// Which script server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `http.server.ThreadingHTTPServer` (`tests/servers/python_server.py`).
    Python,
    /// Node's `http` module (`tests/servers/node_server.js`).
    Node,
    /// Go's `net/http` (`tests/servers/go/`), built with the system `go`.
    Go,
    /// `tests/servers/syscall_server.py`: requests read and responses
    /// written with the given syscalls (`read`, `recvfrom`, `readv`,
    /// `recvmsg`; `write`, `sendto`, `writev`, `sendmsg`, `sendfile`,
    /// `writev_fields`).
    Syscalls(&'static str, &'static str),
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Python => "python",
            Kind::Node => "node",
            Kind::Go => "go",
            Kind::Syscalls(..) => "syscalls",
        }
    }
}

/// A Python, Node or Go server process, killed on drop.
pub struct ScriptServer {
    kind: Kind,
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

fn servers_dir() -> PathBuf {
    workspace_root().join("tests/servers")
}

/// Fails the test loudly when `program` is not installed.
fn require_program(program: &str, package: &str) {
    let found = Command::new(program)
        .arg(if program == "go" {
            "version"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{program}` is not installed: these tests need the Debian package `{package}` \
         (apt-get install -y {package}; cargo xtask setup installs it)"
    );
}

/// Builds the Go server once per test process (and once per source
/// version: the binary is kept next to the test binaries, named after a
/// hash of the source) and returns its path.
fn go_server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        require_program("go", "golang-go");
        let src = servers_dir().join("go");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for f in ["main.go", "go.mod"] {
            std::fs::read(src.join(f))
                .unwrap_or_else(|e| panic!("read {}: {e}", src.join(f).display()))
                .hash(&mut h);
        }
        let out_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(std::env::temp_dir)
            .join("burnwatch-e2e-servers");
        std::fs::create_dir_all(&out_dir).unwrap();
        let bin = out_dir.join(format!("go-server-{:016x}", h.finish()));
        if bin.exists() {
            return bin;
        }
        let tmp = out_dir.join(format!("go-server.tmp.{}", std::process::id()));
        let mut go = Command::new("go");
        if std::env::var_os("GOCACHE").is_none()
            && std::env::var_os("HOME").is_none()
            && std::env::var_os("XDG_CACHE_HOME").is_none()
        {
            go.env("GOCACHE", out_dir.join("gocache"));
        }
        let out = go
            .args(["build", "-o"])
            .arg(&tmp)
            .arg(".")
            .current_dir(&src)
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GO111MODULE", "on")
            .env("CGO_ENABLED", "0")
            .output()
            .expect("run go build");
        assert!(
            out.status.success(),
            "go build of {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &bin).unwrap();
        bin
    })
    .clone()
}

impl ScriptServer {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts a server of `kind` on a free port.
    pub fn start(kind: Kind) -> ScriptServer {
        Self::start_on(kind, free_port())
    }

    /// Starts a server of `kind` on `port` and waits until it accepts.
    pub fn start_on(kind: Kind, port: u16) -> ScriptServer {
        Self::start_with(kind, port, &[])
    }

    /// Starts a server of `kind` on `port` with extra environment variables
    /// (`TENANT_FROM=host|path`, see the servers' sources).
    pub fn start_with(kind: Kind, port: u16, env: &[(&str, &str)]) -> ScriptServer {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.log");
        std::fs::write(&log, "").unwrap();
        let mut cmd = match kind {
            Kind::Python => {
                require_program("python3", "python3");
                let mut c = Command::new("python3");
                c.arg("-u").arg(servers_dir().join("python_server.py"));
                c
            }
            Kind::Node => {
                require_program("node", "nodejs");
                let mut c = Command::new("node");
                c.arg(servers_dir().join("node_server.js"));
                c
            }
            Kind::Go => Command::new(go_server_binary()),
            Kind::Syscalls(..) => {
                require_program("python3", "python3");
                let mut c = Command::new("python3");
                c.arg("-u").arg(servers_dir().join("syscall_server.py"));
                c
            }
        };
        cmd.arg(port.to_string()).arg(&log);
        if let Kind::Syscalls(read, write) = kind {
            cmd.args([read, write]);
        }
        cmd.envs(env.iter().copied());
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start the {} server: {e}", kind.name()));
        let mut server = ScriptServer {
            kind,
            port,
            child,
            dir,
        };
        let up = wait_for(Duration::from_secs(20), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "the {} server exited with {status}:\n{}",
                    kind.name(),
                    server.diagnostics()
                );
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(
            up.is_some(),
            "the {} server did not listen on {port}:\n{}",
            kind.name(),
            server.diagnostics()
        );
        server
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("requests.log")
    }

    /// Kills the server with SIGKILL (no close syscalls: the kernel closes
    /// its sockets as the process exits) and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server for ScriptServer {
    fn kind(&self) -> &'static str {
        self.kind.name()
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    fn diagnostics(&self) -> String {
        let stderr =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        format!("{} server stderr:\n{stderr}", self.kind.name())
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: say whether the server was still up, and
            // what it printed.
            let state = match self.child.try_wait() {
                Ok(Some(status)) => format!("had exited ({status})"),
                _ => "was still running".to_string(),
            };
            eprintln!(
                "the {} server on port {} {state}; {}",
                self.kind.name(),
                self.port,
                self.diagnostics()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server of any kind by name: `nginx`, `python`, `node`, `go`.
pub fn start(kind: &str) -> Box<dyn Server> {
    match kind {
        "nginx" => Box::new(crate::nginx::Nginx::start()),
        "python" => Box::new(ScriptServer::start(Kind::Python)),
        "node" => Box::new(ScriptServer::start(Kind::Node)),
        "go" => Box::new(ScriptServer::start(Kind::Go)),
        other => panic!("no server kind {other:?}"),
    }
}
