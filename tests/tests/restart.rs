//! Zero loss across agent restarts: the programs and maps are pinned in
//! bpffs, so the kernel keeps counting while the agent is gone, and the
//! checkpoint holds the kernel counts the SLO windows already contain.
//! Also: `burnwatch uninstall` and `run --cleanup` leave nothing attached.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use burnwatch_e2e::agent::{Agent, binary, counts_of};
use burnwatch_e2e::client::Conn;
use burnwatch_e2e::nginx::Nginx;
use burnwatch_e2e::{assert_same_counts, client, require_root};

const SLO: &str = "shop-availability";

fn config(port: u16) -> String {
    format!(
        "services:\n  - name: shop\n    match:\n      port: {port}\n\
tenant:\n  header: X-Tenant-ID\n  missing: unknown\n\
slos:\n  - name: {SLO}\n    service: shop\n    objective: 99.9\n    window: 30d\n"
    )
}

/// The i-th request of a traffic stream: tenant and path (200, 404, 500).
fn request(i: u64) -> (&'static str, &'static str) {
    let tenant = ["acme", "globex", "initech"][(i % 3) as usize];
    let path = match i % 7 {
        0 => "/error",
        1 | 2 => "/missing",
        _ => "/ok",
    };
    (tenant, path)
}

/// Steady traffic until `stop`: one keep-alive connection, and one new
/// connection per request. Returns the requests answered.
fn traffic(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut keep_alive = Conn::open(port);
        while !stop.load(Ordering::Relaxed) {
            let (tenant, path) = request(sent);
            keep_alive.request("GET", path, Some(tenant));
            sent += 1;
            let (tenant, path) = request(sent);
            Conn::open(port).request("GET", path, Some(tenant));
            sent += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    })
}

/// (good, bad) the SLO engine holds in the SLO's 30-day window.
fn engine_period(agent: &Agent, tenant: &str) -> (u64, u64) {
    let body = client::get_body(
        agent.metrics_port,
        &format!("/v1/slo?slo={SLO}&tenant={tenant}"),
    )
    .unwrap_or_else(|| panic!("/v1/slo for {tenant}; log:\n{}", agent.log()));
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let get = |k: &str| v["period"][k].as_f64().unwrap_or(-1.0).round() as u64;
    (get("good"), get("bad"))
}

#[test]
fn kill_9_mid_traffic_loses_and_doubles_nothing() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    let pins = agent.pins.clone();
    assert!(
        pins.read_dir().is_ok_and(|mut d| d.next().is_some()),
        "nothing pinned under {}",
        pins.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (a, b) = (
        traffic(nginx.port, stop.clone()),
        traffic(nginx.port, stop.clone()),
    );
    // Long enough for polls and a checkpoint (every 2 s) with traffic in it.
    std::thread::sleep(Duration::from_millis(3300));
    agent.kill9();
    // The kernel keeps counting while no agent runs.
    std::thread::sleep(Duration::from_secs(2));
    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    assert!(
        agent.log().contains("reusing pinned eBPF programs"),
        "the restarted agent did not reuse the pinned state:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let sent = a.join().unwrap() + b.join().unwrap();
    nginx.wait_for_log_lines(sent as usize);

    let want = nginx.counts("unknown");
    assert_eq!(want.values().sum::<u64>(), sent);
    let e = agent.settle_and_scrape();
    assert_same_counts(
        "requests across kill -9",
        &counts_of(&e, "shop"),
        &want,
        &agent,
    );
    for (tenant, (good, bad)) in burnwatch_e2e::nginx::slo_events(&want) {
        let metric = |outcome: &str| {
            e.sum(
                "burnwatch_slo_events_total",
                &[("slo", SLO), ("tenant", &tenant), ("outcome", outcome)],
            ) as u64
        };
        assert_eq!(
            (metric("good"), metric("bad")),
            (good, bad),
            "burnwatch_slo_events_total of {tenant} (good, bad)"
        );
        // The windows: what the engine burns on. Nothing counted twice (the
        // kernel's counts include what the restored windows hold), nothing
        // lost (requests while no agent ran are in the kernel's counts).
        assert_eq!(
            engine_period(&agent, &tenant),
            (good, bad),
            "SLO window of {tenant} (good, bad) after kill -9; sent {sent}; log:\n{}",
            agent.log()
        );
    }
}

/// Link ids of the links pinned under `pins`, from bpftool.
fn pinned_link_ids(pins: &Path) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for build in std::fs::read_dir(pins).expect("pin root").flatten() {
        for link in std::fs::read_dir(build.path().join("links"))
            .unwrap()
            .flatten()
        {
            let out = bpftool(&["link", "show", "pinned", link.path().to_str().unwrap()]);
            ids.insert(out["id"].as_u64().expect("link id"));
        }
    }
    ids
}

/// Every link the kernel has, by id. `bpftool link show` lists the ids,
/// then asks for each: a link another test's agent detaches in between
/// fails the whole listing ("can't get link by id (N): Resource
/// temporarily unavailable"), so the listing is taken again.
fn all_link_ids() -> BTreeSet<u64> {
    for _ in 0..20 {
        let out = Command::new("bpftool")
            .args(["-j", "link", "show"])
            .output()
            .expect("bpftool not found: install it (cargo xtask setup installs Debian's bpftool)");
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() && text.contains("can't get link by id") {
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        }
        assert!(out.status.success(), "bpftool link show: {out:?}");
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        return links
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|l| l["id"].as_u64())
            .collect();
    }
    panic!("bpftool link show kept racing with detaching links");
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool not found: install it (cargo xtask setup installs Debian's bpftool)");
    assert!(out.status.success(), "bpftool {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

#[test]
fn sigterm_keeps_pins_uninstall_and_cleanup_remove_them() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();

    // Without --cleanup: SIGTERM leaves the programs attached and pinned.
    let agent = Agent::start_with_state(&config(nginx.port), Some(state.path()));
    let pins = agent.pins.clone();
    let links = pinned_link_ids(&pins);
    // One per hook: 5 on the socket path, 15 on the syscall path.
    assert!(links.len() >= 5, "links pinned: {links:?}");
    assert!(links.is_subset(&all_link_ids()));
    agent.stop_keeping_pins();
    assert!(
        links.is_subset(&all_link_ids()),
        "SIGTERM without --cleanup detached the programs"
    );
    // They keep counting with no agent running.
    let mut c = Conn::open(nginx.port);
    for _ in 0..5 {
        assert_eq!(c.request("GET", "/ok", Some("acme")).status, 200);
    }

    // `burnwatch uninstall` removes the pins; the links go with them.
    let out = Command::new(binary())
        .args(["uninstall", "--bpffs-dir"])
        .arg(&pins)
        .output()
        .unwrap();
    assert!(out.status.success(), "uninstall: {out:?}");
    assert!(!pins.exists(), "{} still exists", pins.display());
    let left: Vec<u64> = links.intersection(&all_link_ids()).copied().collect();
    assert!(
        left.is_empty(),
        "links still attached after uninstall: {left:?}"
    );

    // `run --cleanup`: SIGTERM removes everything.
    let agent = Agent::start_with_args(&config(nginx.port), Some(state.path()), &["--cleanup"]);
    let links = pinned_link_ids(&agent.pins);
    assert!(!links.is_empty());
    let pins = agent.pins.clone();
    agent.stop_keeping_pins();
    assert!(
        !pins.exists(),
        "{} still exists after --cleanup",
        pins.display()
    );
    let left: Vec<u64> = links.intersection(&all_link_ids()).copied().collect();
    assert!(
        left.is_empty(),
        "links still attached after --cleanup: {left:?}"
    );
}
