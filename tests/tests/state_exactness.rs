//! Every request the kernel counted is in the SLO windows exactly once,
//! whatever happens to the agent: kill -9 before its first checkpoint, a
//! state file removed while it runs, a full disk, reloads and restarts
//! while tenants overflow `tenant.max_per_service`. The oracle is nginx's
//! own log; the windows are read from the engine (`/v1/slo`). Also: the gate
//! fails closed for tenants it cannot judge, an empty config file is not
//! applied, and a reload that moves the OTLP endpoint takes effect.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use burnwatch_e2e::agent::{Agent, binary};
use burnwatch_e2e::client::{self, Conn};
use burnwatch_e2e::nginx::Nginx;
use burnwatch_e2e::peers::Rotel;
use burnwatch_e2e::{require_root, wait_for};

const SLO: &str = "shop-availability";
/// How long a test waits for a line in the agent's log.
const LOG_WAIT: Duration = Duration::from_secs(20);

fn config(port: u16, extra: &str) -> String {
    format!(
        "services:\n  - name: shop\n    match:\n      port: {port}\n\
tenant:\n  header: X-Tenant-ID\n  missing: unknown\n{extra}\
slos:\n  - name: {SLO}\n    service: shop\n    objective: 99.9\n    window: 30d\n"
    )
}

/// `n` requests of `tenant` on one keep-alive connection; every 5th is a 500.
fn send(port: u16, tenant: &str, n: u64) {
    let mut c = Conn::open(port);
    for i in 0..n {
        let path = if i % 5 == 4 { "/error" } else { "/ok" };
        c.request("GET", path, Some(tenant));
    }
}

/// (good, bad) per tenant from nginx's log.
fn log_events(nginx: &Nginx) -> BTreeMap<String, (u64, u64)> {
    nginx.slo_events("unknown")
}

/// (good, bad) the engine holds in the SLO's 30-day window for `tenant`.
fn window(agent: &Agent, tenant: &str) -> (u64, u64) {
    let body = client::get_body(
        agent.metrics_port,
        &format!("/v1/slo?slo={SLO}&tenant={tenant}"),
    );
    let Some(body) = body else { return (0, 0) };
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let get = |k: &str| v["period"][k].as_f64().unwrap_or(-1.0).round() as u64;
    (get("good"), get("bad"))
}

/// Waits for the windows to hold `want` (the agent polls every second).
fn assert_windows(agent: &Agent, want: &BTreeMap<String, (u64, u64)>, what: &str) {
    let got = || -> BTreeMap<String, (u64, u64)> {
        want.keys().map(|t| (t.clone(), window(agent, t))).collect()
    };
    let settled = wait_for(Duration::from_secs(10), || (got() == *want).then_some(()));
    if settled.is_none() {
        panic!(
            "{what}: SLO windows (good, bad) per tenant\n got: {:?}\nwant: {want:?}\nlog:\n{}",
            got(),
            agent.log()
        );
    }
}

#[test]
fn kill_9_before_the_first_checkpoint_loses_nothing() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    // No checkpoint for an hour: the agent dies with none written.
    let agent = Agent::start_checkpointing(
        &config(nginx.port, ""),
        Some(state.path()),
        "",
        &[],
        &[],
        3600,
    );
    send(nginx.port, "acme", 40);
    send(nginx.port, "globex", 25);
    std::thread::sleep(Duration::from_millis(1500));
    agent.kill9();
    // Counted by the kernel while no agent runs.
    send(nginx.port, "acme", 10);
    let agent = Agent::start_with_state(&config(nginx.port, ""), Some(state.path()));
    send(nginx.port, "initech", 5);
    nginx.wait_for_log_lines(80);
    assert_windows(
        &agent,
        &log_events(&nginx),
        "after kill -9 before any checkpoint",
    );
    agent.stop();
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_removed_state_file_and_a_full_disk_recover() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let nginx = Nginx::start();
    let root = tempfile::tempdir().unwrap();
    let _disk = Tmpfs::mount(root.path(), "8m");
    let state = root.path().join("state");
    let agent = Agent::start_with_state(&config(nginx.port, ""), Some(&state));
    let file = state.join("state.redb");
    send(nginx.port, "acme", 20);
    assert!(
        wait_for(Duration::from_secs(10), || file.exists().then_some(())).is_some(),
        "no state file"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600, "the state file holds tenant ids");

    // Removed while the agent runs: written anew at the next checkpoint.
    std::fs::remove_file(&file).unwrap();
    send(nginx.port, "globex", 15);
    agent.wait_log("writing it anew", LOG_WAIT);
    assert!(
        wait_for(Duration::from_secs(10), || file.exists().then_some(())).is_some(),
        "the state file was not recreated:\n{}",
        agent.log()
    );
    assert_eq!(mode(&file), 0o600);

    // The disk fills up: checkpoints fail...
    let filler = root.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    // (redb grows its file by whole regions: new tenants make it write more.)
    for i in 0..30 {
        send(nginx.port, &format!("tenant-{i}"), 2);
    }
    agent.wait_log("SLO checkpoint failed", LOG_WAIT);
    // ...until there is room again.
    std::fs::remove_file(&filler).unwrap();
    send(nginx.port, "acme", 7);
    agent.wait_log("SLO checkpoints succeed again", LOG_WAIT);
    nginx.wait_for_log_lines(20 + 15 + 60 + 7);
    // A checkpoint after every request above.
    std::thread::sleep(Duration::from_millis(2500));
    let pins = agent.pins.clone();
    agent.kill9();
    // The kernel maps go too: the next agent starts from fresh maps, so its
    // windows can only come from the recreated, recovered state file.
    let out = Command::new(binary())
        .args(["uninstall", "--bpffs-dir"])
        .arg(&pins)
        .output()
        .unwrap();
    assert!(out.status.success(), "uninstall: {out:?}");
    let agent = Agent::start_with_state(&config(nginx.port, ""), Some(&state));
    assert!(
        agent.log().contains("restored SLO state"),
        "{}",
        agent.log()
    );
    assert_windows(
        &agent,
        &log_events(&nginx),
        "from the state file after its loss, a full disk, kill -9 and fresh maps",
    );
    // And what the new maps count is added to it.
    send(nginx.port, "initech", 9);
    nginx.wait_for_log_lines(20 + 15 + 60 + 7 + 9);
    assert_windows(&agent, &log_events(&nginx), "after more traffic");
    agent.stop();
}

/// The tenant labels of `burnwatch_http_requests_total` on shop.
fn labelled_tenants(agent: &Agent) -> BTreeMap<String, u64> {
    let e = agent.settle_and_scrape();
    let mut out = BTreeMap::new();
    for s in e.find("burnwatch_http_requests_total", &[("service", "shop")]) {
        *out.entry(s.labels["tenant"].clone()).or_default() += s.value as u64;
    }
    out
}

#[test]
fn overflow_admission_is_stable_across_reload_and_restart() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let cap = "  max_per_service: 3\n";
    let first = ["t00", "t01", "t02"];
    let rest: Vec<String> = (3..24).map(|i| format!("t{i:02}")).collect();
    let agent = Agent::start_with_state(&config(nginx.port, cap), Some(state.path()));
    for t in first {
        send(nginx.port, t, 10);
    }
    // Admitted at the next poll, before anyone else is seen.
    std::thread::sleep(Duration::from_millis(1500));
    for t in &rest {
        send(nginx.port, t, 5);
    }
    nginx.wait_for_log_lines(30 + 21 * 5);

    // The windows: each admitted tenant its own, everyone else one overflow.
    let expected = |nginx: &Nginx| {
        let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (tenant, (g, b)) in log_events(nginx) {
            let name = if first.contains(&tenant.as_str()) {
                tenant
            } else {
                "__overflow__".to_string()
            };
            let e = want.entry(name).or_default();
            e.0 += g;
            e.1 += b;
        }
        want
    };
    let check = |agent: &Agent, what: &str| {
        assert_windows(agent, &expected(&nginx), what);
        let labels = labelled_tenants(agent);
        let mut names: Vec<&str> = labels.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            ["__overflow__", "t00", "t01", "t02"],
            "{what}: tenant labels; log:\n{}",
            agent.log()
        );
        // The gate cannot judge a folded tenant: it defers, it does not approve.
        let gate = client::get_body(
            agent.metrics_port,
            &format!("/v1/gate?slo={SLO}&tenant=t17&risk=low"),
        )
        .expect("gate");
        assert!(
            gate.contains("\"verdict\":\"defer\"") && gate.contains("folded"),
            "{what}: gate for a folded tenant: {gate}"
        );
        let gate = client::get_body(
            agent.metrics_port,
            &format!("/v1/gate?slo={SLO}&tenant=never-seen&risk=low"),
        )
        .expect("gate");
        assert!(
            gate.contains("\"verdict\":\"defer\""),
            "{what}: gate for an unknown tenant: {gate}"
        );
    };
    check(&agent, "before any restart");

    // A reload (an SLO added) rebuilds the series: admission stays.
    agent.rewrite_config(&format!(
        "{}  - name: shop-latency\n    service: shop\n    objective: 99\n    window: 7d\n    sli: {{ latency: {{ threshold: 250ms }} }}\n",
        config(nginx.port, cap)
    ));
    agent.wait_log("config reload (file changed): applied", LOG_WAIT);
    for t in first.iter().copied().chain(rest.iter().map(String::as_str)) {
        send(nginx.port, t, 2);
    }
    nginx.wait_for_log_lines(135 + 24 * 2);
    check(&agent, "after a reload");

    // kill -9 after a checkpoint, then more traffic in another order.
    std::thread::sleep(Duration::from_millis(2500));
    agent.kill9();
    for t in rest.iter().rev() {
        send(nginx.port, t, 3);
    }
    let agent = Agent::start_with_state(&config(nginx.port, cap), Some(state.path()));
    for t in rest.iter().map(String::as_str).chain(first) {
        send(nginx.port, t, 1);
    }
    nginx.wait_for_log_lines(183 + 21 * 3 + 24);
    check(&agent, "after kill -9");
    // And a clean stop and start.
    agent.stop_keeping_pins();
    let agent = Agent::start_with_state(&config(nginx.port, cap), Some(state.path()));
    check(&agent, "after SIGTERM and a start");
    agent.stop();
}

#[test]
fn an_empty_config_file_is_not_applied() {
    require_root();
    let nginx = Nginx::start();
    let agent = Agent::start(&config(nginx.port, ""));
    send(nginx.port, "acme", 20);
    nginx.wait_for_log_lines(20);
    let want = log_events(&nginx);
    assert_windows(&agent, &want, "before the reload");
    // A save cut short: the file is empty for a while.
    std::fs::write(&agent.config_path, "").unwrap();
    agent.wait_log("the file is empty", LOG_WAIT);
    agent.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !agent.log().contains("applied"),
        "an empty config was applied:\n{}",
        agent.log()
    );
    assert_windows(&agent, &want, "after an empty config");
    let slos = client::get_body(agent.metrics_port, "/v1/slos").expect("/v1/slos");
    assert!(slos.contains(SLO), "the SLO is gone: {slos}");
    agent.stop();
}

#[test]
fn a_reload_moves_the_otlp_exporter_to_the_new_endpoint() {
    require_root();
    let nginx = Nginx::start();
    let (a, b) = (Rotel::start(), Rotel::start());
    // Under the harness's `exporters:` (it adds the listen address).
    let otlp = |port: u16| {
        format!(
            "  otlp: {{ endpoint: \"http://127.0.0.1:{port}\", protocol: grpc, interval: 1s }}\n"
        )
    };
    let agent = Agent::start_with_exporters(&config(nginx.port, ""), None, &otlp(a.grpc_port));
    send(nginx.port, "acme", 5);
    let points = |r: &Rotel| r.points("burnwatch_http_requests").len();
    assert!(
        wait_for(Duration::from_secs(20), || (points(&a) > 0).then_some(())).is_some(),
        "collector A got nothing:\n{}",
        agent.log()
    );
    let tmp = agent.config_path.with_extension("tmp");
    let text = std::fs::read_to_string(&agent.config_path)
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}", a.grpc_port),
            &format!("127.0.0.1:{}", b.grpc_port),
        );
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &agent.config_path).unwrap();
    agent.wait_log("config reload (file changed): applied", LOG_WAIT);
    send(nginx.port, "acme", 5);
    assert!(
        wait_for(Duration::from_secs(20), || (points(&b) > 0).then_some(())).is_some(),
        "collector B got nothing after the reload:\n{}",
        agent.log()
    );
    // A gets nothing more once the switch is made.
    std::thread::sleep(Duration::from_secs(2));
    let a_then = points(&a);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(points(&a), a_then, "the old collector still gets exports");
    agent.stop();
}

#[test]
fn an_upgrade_hands_the_old_builds_counts_over() {
    require_root();
    let nginx = Nginx::start();
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::start_with_state(&config(nginx.port, ""), Some(state.path()));
    let pins = agent.pins.clone();
    send(nginx.port, "acme", 30);
    send(nginx.port, "globex", 10);
    std::thread::sleep(Duration::from_millis(1500));
    // SIGTERM: a last read and checkpoint; the old programs keep counting.
    agent.stop_keeping_pins();
    send(nginx.port, "acme", 15);
    send(nginx.port, "initech", 5);
    // Another build (other eBPF code): fresh maps, the old pins removed.
    let agent = Agent::start_with_env(
        &config(nginx.port, ""),
        Some(state.path()),
        "",
        &[],
        &[("BURNWATCH_DEBUG_BUILD_ID", "00000000deadbeef")],
    );
    agent.wait_log("read the old build's final counts", LOG_WAIT);
    let builds: Vec<String> = std::fs::read_dir(&pins)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 16)
        .collect();
    assert_eq!(builds, ["00000000deadbeef"], "the old build's pins stay");
    send(nginx.port, "globex", 10);
    nginx.wait_for_log_lines(70);
    assert_windows(&agent, &log_events(&nginx), "after an upgrade");
    agent.stop();
}

#[test]
fn a_reload_that_changes_the_tenant_cap_feeds_nothing_twice() {
    require_root();
    let nginx = Nginx::start();
    let cap = |n: u32| format!("  max_per_service: {n}\n");
    let agent = Agent::start(&config(nginx.port, &cap(3)));
    let tenants: Vec<String> = (0..12).map(|i| format!("t{i:02}")).collect();
    for t in &tenants[..3] {
        send(nginx.port, t, 10);
    }
    std::thread::sleep(Duration::from_millis(1500));
    for t in &tenants[3..] {
        send(nginx.port, t, 5);
    }
    nginx.wait_for_log_lines(30 + 9 * 5);
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let fold = |expected: &mut BTreeMap<String, (u64, u64)>,
                events: &BTreeMap<String, (u64, u64)>,
                admitted: &[String]| {
        for (tenant, (g, b)) in events {
            let name = if admitted.contains(tenant) {
                tenant.clone()
            } else {
                "__overflow__".to_string()
            };
            let e = expected.entry(name).or_default();
            e.0 += g;
            e.1 += b;
        }
    };
    let mut before = log_events(&nginx);
    fold(&mut expected, &before, &tenants[..3]);
    assert_windows(&agent, &expected, "under a cap of 3");

    // Raised: two more tenants get their own series from now on; what
    // they sent before stays in __overflow__'s windows, not fed again.
    for (n, what) in [(5, "raised to 5"), (2, "lowered to 2")] {
        let seen = agent
            .log()
            .matches("config reload (file changed): applied")
            .count();
        agent.rewrite_config(&config(nginx.port, &cap(n)));
        let applied = wait_for(Duration::from_secs(20), || {
            (agent
                .log()
                .matches("config reload (file changed): applied")
                .count()
                > seen)
                .then_some(())
        });
        assert!(applied.is_some(), "{what}: not applied:\n{}", agent.log());
        let lines = nginx.access_log().len();
        for t in &tenants {
            send(nginx.port, t, 2);
        }
        nginx.wait_for_log_lines(lines + tenants.len() * 2);
        let admitted: Vec<String> = labelled_tenants(&agent)
            .into_keys()
            .filter(|t| t != "__overflow__")
            .collect();
        assert_eq!(admitted.len(), n as usize, "{what}: {admitted:?}");
        if n == 2 {
            assert!(
                admitted.iter().all(|t| tenants[..3].contains(t)),
                "a lowered cap keeps the first admitted: {admitted:?}"
            );
        }
        let now = log_events(&nginx);
        let mut after = BTreeMap::new();
        for (t, (g, b)) in &now {
            let (g0, b0) = before.get(t).copied().unwrap_or((0, 0));
            after.insert(t.clone(), (g - g0, b - b0));
        }
        fold(&mut expected, &after, &admitted);
        assert_windows(&agent, &expected, what);
        before = now;
    }
    agent.stop();
}
