//! Degrade, don't die: an optional eBPF program that a kernel refuses (its
//! failure forced here with the debug switch `BURNWATCH_DEBUG_SKIP_PROGRAMS`)
//! turns off its capability, the agent says so in one log line, reports it
//! (`burnwatch_capability`, `/v1/slos`), and keeps counting exactly with the
//! rest. A core program's failure stops the agent with the reason.

use std::time::Duration;

use burnwatch_e2e::{agent::Agent, client::Conn, nginx::Nginx, require_root};

const SKIP: &str = "BURNWATCH_DEBUG_SKIP_PROGRAMS";

#[test]
fn an_optional_program_that_fails_leaves_the_rest_counting_exactly() {
    require_root();
    let nginx = Nginx::start();
    let agent = Agent::start_with_env(
        &format!(
            "services:\n  - name: shop\n    match:\n      port: {}\n",
            nginx.port
        ),
        None,
        "",
        &[],
        // Framing of several responses per buffer (either capture path's),
        // and TCP resets.
        &[(SKIP, "frame_responses,sock_frame_responses,tcp_send_reset")],
    );
    // One request at a time per connection: the core path alone counts it.
    let tenants = [Some("acme"), Some("globex"), None];
    let paths = ["/ok", "/missing", "/error", "/created"];
    let mut conns: Vec<Conn> = tenants.iter().map(|_| Conn::open(nginx.port)).collect();
    let mut sent = 0;
    for round in 0..6 {
        for (i, tenant) in tenants.iter().enumerate() {
            conns[i].request("GET", paths[(round + i) % paths.len()], *tenant);
            sent += 1;
        }
    }
    drop(conns);
    nginx.wait_for_log_lines(sent);
    let expected = nginx.counts("unknown");
    let got = agent.counts("shop");
    assert_eq!(
        got,
        expected,
        "agent counts (left) differ from nginx's access log (right); agent log:\n{}",
        agent.log()
    );
    assert!(got.values().sum::<u64>() == sent as u64);

    let e = agent.scrape();
    let capability = |feature: &str| e.sum("burnwatch_capability", &[("feature", feature)]);
    assert_eq!(capability("core"), 1.0);
    assert_eq!(capability("pipelined_responses"), 0.0);
    assert_eq!(capability("tcp_resets"), 0.0);
    for up in [
        "client_requests",
        "sendfile_bodies",
        "open_at_close",
        "descriptor_reuse",
    ] {
        assert_eq!(capability(up), 1.0, "{up} should be up");
    }

    // One plain line per program: which, why, and what is not counted.
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("frame_responses is not running"))
        .unwrap_or_else(|| panic!("no line about frame_responses:\n{log}"));
    assert!(
        line.contains(SKIP) && line.contains("pipelined_responses is down"),
        "{line}"
    );
    assert!(
        log.contains("tcp_send_reset is not running"),
        "no line about tcp_send_reset:\n{log}"
    );

    let body = burnwatch_e2e::client::get_body(agent.metrics_port, "/v1/slos").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["capabilities"]["pipelined_responses"], false, "{body}");
    assert_eq!(v["capabilities"]["core"], true, "{body}");
}

#[test]
fn a_core_program_that_fails_stops_the_agent_with_the_reason() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("burnwatch.yaml");
    // bpffs is mounted by the harness's other agents; this one is its own.
    let pins = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/burnwatch-tests/p{}-core-fails",
        std::process::id()
    ));
    std::fs::write(
        &config,
        format!(
            "exporters:\n  prometheus:\n    listen: 127.0.0.1:{}\nstate:\n  dir: {}\n  bpffs_dir: {}\n",
            burnwatch_e2e::free_port(),
            dir.path().join("state").display(),
            pins.display(),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(burnwatch_e2e::agent::binary())
        .args(["run", "--config"])
        .arg(&config)
        // Both paths' read program: the socket path's refusal makes the
        // agent fall back to the syscall path (`auto`), whose refusal ends it.
        .env(SKIP, "sock_recv,sys_exit_read")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent kept running without its core program");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("sys_exit_read") && stderr.contains("core") && stderr.contains(SKIP),
        "the reason names the program and why:\n{stderr}"
    );
    if kernel_has_socket_path() {
        assert!(
            stderr.contains("sock_recv") && stderr.contains("falling back to the syscall path"),
            "the socket path was tried first:\n{stderr}"
        );
    }
    // Nothing is left attached or pinned.
    let left: Vec<_> = walk(&pins);
    assert!(left.is_empty(), "pins left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&pins);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether this kernel has the socket path's tracepoints (6.4+).
fn kernel_has_socket_path() -> bool {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    let needle = b"btf_trace_sock_recv_length\0";
    btf.windows(needle.len()).any(|w| w == needle)
}

/// The socket path's core program refused (`auto`): the agent falls back to
/// the syscall path, says so, reports `socket_capture` 0, and counts
/// exactly there.
#[test]
fn a_socket_path_that_cannot_load_falls_back_to_the_syscall_path() {
    require_root();
    if !kernel_has_socket_path() {
        eprintln!("this kernel has no socket path (before 6.4): nothing to fall back from");
        return;
    }
    let nginx = Nginx::start();
    let agent = Agent::start_with_env(
        &format!(
            "services:\n  - name: shop\n    match:\n      port: {}\n",
            nginx.port
        ),
        None,
        "",
        &[],
        &[(SKIP, "sock_send")],
    );
    let mut c = Conn::open(nginx.port);
    for i in 0..10 {
        c.request(
            "GET",
            if i % 3 == 0 { "/error" } else { "/ok" },
            Some("acme"),
        );
    }
    drop(c);
    nginx.wait_for_log_lines(10);
    let expected = nginx.counts("unknown");
    assert_eq!(agent.counts("shop"), expected, "log:\n{}", agent.log());
    let e = agent.scrape();
    assert_eq!(
        e.sum("burnwatch_capability", &[("feature", "socket_capture")]),
        0.0
    );
    let log = agent.log();
    assert!(
        log.contains("sock_send") && log.contains("falling back to the syscall path"),
        "{log}"
    );
}
