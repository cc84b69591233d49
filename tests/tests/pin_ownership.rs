//! The agent owns its pin root (`state.bpffs_dir`) and notices when its
//! kernel side is taken away, with the real agent and real nginx:
//!
//! - a second agent on the same pin root refuses to start, naming the pin
//!   root and the first agent's pid; `burnwatch uninstall` refuses while an
//!   agent holds it; after `kill -9` the lock is gone and an agent starts;
//! - pins removed mid-traffic (`rm -r`, `burnwatch uninstall --force`) are
//!   noticed, logged and pinned again from the descriptors the agent holds:
//!   the counts stay exact against nginx's log;
//! - a pin replaced by another map is put back, counts exact;
//! - a pin root taken by another holder: not ready (503 with the reason),
//!   then exit non-zero; the next agent starts and counts.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use burnwatch_e2e::agent::{Agent, binary, counts_of};
use burnwatch_e2e::client::{self, Conn};
use burnwatch_e2e::nginx::Nginx;
use burnwatch_e2e::{assert_same_counts, require_root, wait_for};

fn config(port: u16) -> String {
    format!(
        "services:\n  - name: shop\n    match:\n      port: {port}\n\
tenant:\n  header: X-Tenant-ID\n  missing: unknown\n"
    )
}

/// Steady traffic until `stop`: a keep-alive connection and a new
/// connection per request, three tenants, 200/404/500. Returns the count.
fn traffic(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut keep_alive = Conn::open(port);
        while !stop.load(Ordering::Relaxed) {
            let tenant = ["acme", "globex", "initech"][(sent % 3) as usize];
            let path = ["/ok", "/missing", "/error", "/ok"][(sent % 4) as usize];
            keep_alive.request("GET", path, Some(tenant));
            Conn::open(port).request("GET", path, Some(tenant));
            sent += 2;
            std::thread::sleep(Duration::from_millis(3));
        }
        sent
    })
}

/// `/readyz`: (status, body).
fn readyz(agent: &Agent) -> (Option<u16>, String) {
    (
        client::get_status(agent.metrics_port, "/readyz"),
        client::get_body(agent.metrics_port, "/readyz").unwrap_or_default(),
    )
}

fn uninstall(pins: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(["uninstall", "--bpffs-dir"])
        .arg(pins)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn second_agent_and_uninstall_refuse_while_an_agent_holds_the_pin_root() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    let pins = agent.pins.clone();

    // A second agent on the same pin root (its own listener and state).
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("second.yaml");
    std::fs::write(
        &second,
        format!(
            "{}exporters:\n  prometheus:\n    listen: 127.0.0.1:{}\nstate:\n  dir: {}\n  bpffs_dir: {}\n",
            config(nginx.port),
            burnwatch_e2e::free_port(),
            dir.path().join("state").display(),
            pins.display()
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&second)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second agent started:\n{err}");
    assert!(
        err.contains(&pins.display().to_string())
            && err.contains(&format!("pid {}", agent.pid()))
            && err.contains("in use"),
        "the refusal names neither the pin root nor the holder:\n{err}"
    );
    // The same config started twice: its port is taken too, and the error
    // still names the agent on the pin root, not just the port.
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&agent.config_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the same config started twice:\n{err}"
    );
    assert!(
        err.contains(&format!("pid {}", agent.pid())) && err.contains("in use"),
        "the same config started twice does not name the running agent:\n{err}"
    );

    // Uninstall refuses too, naming the agent; the pins stay.
    let out = uninstall(&pins, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "uninstall removed a running agent's pins"
    );
    assert!(
        err.contains(&format!("pid {}", agent.pid())) && err.contains("--force"),
        "{err}"
    );
    assert!(pins.read_dir().is_ok_and(|mut d| d.next().is_some()));

    // The first agent is untouched: ready, counting exactly.
    let mut c = Conn::open(nginx.port);
    for i in 0..30 {
        c.request("GET", ["/ok", "/error"][i % 2], Some("acme"));
    }
    drop(c);
    nginx.wait_for_log_lines(30);
    assert_eq!(readyz(&agent).0, Some(200));
    assert_same_counts(
        "requests while a second agent and uninstall were refused",
        &agent.counts("shop"),
        &nginx.counts("unknown"),
        &agent,
    );

    // kill -9 drops the lock with the process: the next agent starts and
    // reuses the pins.
    agent.kill9();
    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    assert!(
        agent.log().contains("reusing pinned eBPF programs"),
        "{}",
        agent.log()
    );
    let out = uninstall(&pins, &["--wait", "1"]);
    assert!(
        !out.status.success(),
        "uninstall --wait did not wait for the agent"
    );
    let pid = agent.pid();
    let waiter = std::thread::spawn(move || uninstall(&pins, &["--wait", "60"]));
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the agent's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = waiter.join().unwrap();
    assert!(
        out.status.success(),
        "uninstall --wait after the agent stopped: {out:?}"
    );
    assert!(!agent.pins.exists(), "pins left behind");
}

#[test]
fn pins_removed_mid_traffic_are_pinned_again_and_counts_stay_exact() {
    require_root();
    let nginx = Nginx::start();
    let agent = Agent::start(&config(nginx.port));
    let pins = agent.pins.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(nginx.port, stop.clone());
    std::thread::sleep(Duration::from_secs(2));

    // rm -r of the whole pin root, as a careless hand would.
    std::fs::remove_dir_all(&pins).unwrap();
    agent.wait_log("were removed while the agent ran", Duration::from_secs(10));
    assert!(
        wait_for(Duration::from_secs(5), || (readyz(&agent).0 == Some(200))
            .then_some(()))
        .is_some(),
        "not ready after the repair: {:?}\n{}",
        readyz(&agent),
        agent.log()
    );
    assert!(
        pins.read_dir().is_ok_and(|mut d| d.next().is_some()),
        "not pinned again"
    );
    std::thread::sleep(Duration::from_secs(1));

    // burnwatch uninstall --force: warns, removes; the agent pins again.
    let out = uninstall(&pins, &["--force"]);
    assert!(out.status.success(), "uninstall --force: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("pid {}", agent.pid())),
        "{out:?}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            (agent
                .log()
                .matches("were removed while the agent ran")
                .count()
                >= 2)
                .then_some(())
        })
        .is_some(),
        "uninstall --force went unnoticed:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let sent = load.join().unwrap();
    nginx.wait_for_log_lines(sent as usize);

    let mut agent = agent;
    assert!(!agent.exited(), "the agent exited:\n{}", agent.log());
    assert_eq!(readyz(&agent).0, Some(200), "{}", agent.log());
    let want = nginx.counts("unknown");
    assert_eq!(want.values().sum::<u64>(), sent);
    assert_same_counts(
        "requests across removed pins",
        &counts_of(&agent.settle_and_scrape(), "shop"),
        &want,
        &agent,
    );
    // The next agent finds the re-pinned set whole and continues it.
    let links = pins
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("links");
    assert!(
        // One per hook: 5 on the socket path, 15 on the syscall path.
        links.read_dir().unwrap().count() >= 5,
        "links not pinned again"
    );
}

#[test]
fn a_replaced_map_pin_is_put_back_and_counts_stay_exact() {
    require_root();
    let nginx = Nginx::start();
    let agent = Agent::start(&config(nginx.port));
    let build = agent
        .pins
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(nginx.port, stop.clone());
    std::thread::sleep(Duration::from_secs(1));

    // Another map where COUNTS was (bpftool, as a tool or script would).
    // (Again if the agent pinned its own back between the two steps.)
    let counts = build.join("maps/COUNTS");
    let created = (0..5).any(|_| {
        let _ = std::fs::remove_file(&counts);
        Command::new("bpftool")
            .args(["map", "create"])
            .arg(&counts)
            .args([
                "type", "hash", "key", "8", "value", "8", "entries", "4", "name", "impostor",
            ])
            .status()
            .expect("bpftool")
            .success()
    });
    assert!(created, "bpftool map create {}", counts.display());
    agent.wait_log("was replaced by another object", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let sent = load.join().unwrap();
    nginx.wait_for_log_lines(sent as usize);
    let want = nginx.counts("unknown");
    assert_same_counts(
        "requests across a replaced pin",
        &counts_of(&agent.settle_and_scrape(), "shop"),
        &want,
        &agent,
    );
    // The pin is the agent's COUNTS again, not the impostor.
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&counts)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    assert_eq!(v["name"], "COUNTS", "{v}");
}

#[test]
fn a_pin_root_taken_by_another_holder_makes_the_agent_exit_non_zero() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let mut agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    let pins = agent.pins.clone();
    let mut c = Conn::open(nginx.port);
    for _ in 0..10 {
        c.request("GET", "/ok", Some("acme"));
    }
    drop(c);

    // The pin root removed and created again, and locked by someone else
    // (standing in for another agent) before the agent looks again.
    std::fs::remove_dir_all(&pins).unwrap();
    std::fs::create_dir(&pins).unwrap();
    let taken = std::fs::File::open(&pins).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(taken.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let not_ready = wait_for(Duration::from_secs(10), || {
        let (status, body) = readyz(&agent);
        (status == Some(503)).then_some(body)
    })
    .unwrap_or_else(|| panic!("/readyz never went 503:\n{}", agent.log()));
    assert!(
        not_ready.contains("held by another")
            && not_ready.contains(&format!("pid {}", std::process::id())),
        "{not_ready}"
    );
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the agent did not exit:\n{}", agent.log()));
    assert!(!status.success(), "exited with {status}");
    let log = agent.log();
    assert_eq!(
        log.matches("kernel side broken").count(),
        1,
        "not logged once at error level:\n{log}"
    );
    assert!(log.contains("ERROR"), "{log}");

    // Once the holder lets go, the next agent starts and counts.
    drop(taken);
    drop(agent);
    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    let mut c = Conn::open(nginx.port);
    for _ in 0..5 {
        c.request("GET", "/ok", Some("globex"));
    }
    drop(c);
    nginx.wait_for_log_lines(15);
    let got = agent.counts("shop");
    assert_eq!(
        got.get(&("globex".to_string(), "200".to_string())),
        Some(&5),
        "{got:?}\n{}",
        agent.log()
    );
}

#[test]
fn a_rewritten_kernel_config_makes_the_agent_exit_non_zero_and_the_next_one_continues() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let mut agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    let build = agent
        .pins
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut c = Conn::open(nginx.port);
    for i in 0..20 {
        c.request("GET", ["/ok", "/error"][i % 2], Some("acme"));
    }

    // Another writer changes the CONFIG map (one byte of its padding: the
    // programs count on as before, only the agent can tell).
    let config_map = build.join("maps/CONFIG");
    let out = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(&config_map)
        .args(["key", "0", "0", "0", "0"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool map lookup: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let mut value: Vec<String> = v["value"]
        .as_array()
        .unwrap_or_else(|| panic!("no value in {v}"))
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    let last = value.last_mut().unwrap();
    *last = if last == "0x01" { "0x02" } else { "0x01" }.to_string();
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&config_map)
        .args(["key", "0", "0", "0", "0", "value"])
        .args(&value)
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool map update: {out:?}");

    let body = wait_for(Duration::from_secs(10), || {
        let (status, body) = readyz(&agent);
        (status == Some(503)).then_some(body)
    })
    .unwrap_or_else(|| panic!("/readyz never went 503:\n{}", agent.log()));
    assert!(body.contains("CONFIG"), "{body}");
    // Counting goes on meanwhile, into the same maps.
    for i in 0..10 {
        c.request("GET", ["/ok", "/missing"][i % 2], Some("globex"));
    }
    drop(c);
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the agent did not exit:\n{}", agent.log()));
    assert!(!status.success(), "exited with {status}");
    assert!(agent.log().contains("was rewritten"), "{}", agent.log());
    agent.kill9(); // keeps the pins: the next agent continues them

    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    assert!(
        agent.log().contains("reusing pinned eBPF programs"),
        "{}",
        agent.log()
    );
    nginx.wait_for_log_lines(30);
    assert_same_counts(
        "requests across a rewritten kernel config",
        &agent.counts("shop"),
        &nginx.counts("unknown"),
        &agent,
    );
}
