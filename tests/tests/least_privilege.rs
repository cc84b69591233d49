//! The chart's capability set is enough: the real agent, started as uid 0
//! with only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH
//! (what helm/burnwatch/templates/daemonset.yaml adds after dropping ALL),
//! loads its programs, names an auto-discovered nginx after its process and
//! counts exactly what nginx logs. Without CAP_PERFMON it refuses to start
//! and says what is missing. One test per binary: it sets BURNWATCH_BIN for
//! the harness.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use burnwatch_e2e::agent::{Agent, binary};
use burnwatch_e2e::{client::Conn, nginx::Nginx, require_root};

/// The chart's `capabilities.add`, as setpriv names them, with their bits.
const CHART_CAPS: &[(&str, u32)] = &[
    ("bpf", 39),
    ("perfmon", 38),
    ("sys_ptrace", 19),
    ("dac_read_search", 2),
];

fn bounding(caps: &[(&str, u32)]) -> String {
    let mut s = String::from("-all");
    for (name, _) in caps {
        s.push_str(",+");
        s.push_str(name);
    }
    s
}

/// Tracepoint attach needs tracefs, which the agent can only mount itself
/// with CAP_SYS_ADMIN; in the chart it comes mounted from the host.
fn ensure_tracefs() {
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        let st = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .unwrap();
        assert!(st.success(), "mount tracefs");
    }
}

#[test]
fn chart_capabilities_are_enough_and_perfmon_is_needed() {
    require_root();
    ensure_tracefs();
    // The real binary (before BURNWATCH_BIN points the harness at the wrapper).
    let agent_bin = binary();
    let dir = tempfile::tempdir().unwrap();
    let caps_file = dir.path().join("caps");
    let wrapper = dir.path().join("burnwatch-least-privilege");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set={} -- /bin/sh -c 'grep ^CapEff: /proc/self/status > \"$1\"; shift; exec \"$@\"' sh {} {} \"$@\"\n",
            bounding(CHART_CAPS),
            caps_file.display(),
            agent_bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: the only test of this binary; set before any thread starts.
    unsafe { std::env::set_var("BURNWATCH_BIN", &wrapper) };

    let nginx = Nginx::start();
    // No services: every server is found and named <comm>:<port>, which
    // reads /proc/<pid>/fd of nginx (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH).
    let agent = Agent::start("");
    let eff = std::fs::read_to_string(&caps_file).unwrap();
    let want: u64 = CHART_CAPS.iter().map(|(_, bit)| 1u64 << bit).sum();
    assert_eq!(
        eff.trim(),
        format!("CapEff:\t{want:016x}"),
        "the agent ran with exactly the chart's capabilities"
    );

    let mut sent = 0;
    let mut conn = Conn::open(nginx.port);
    for (i, path) in ["/ok", "/error", "/missing", "/ok", "/unavailable", "/ok"]
        .iter()
        .enumerate()
    {
        conn.request("GET", path, [Some("acme"), Some("globex"), None][i % 3]);
        sent += 1;
    }
    drop(conn);
    nginx.wait_for_log_lines(sent);
    let expected = nginx.counts("unknown");
    let service = format!("nginx:{}", nginx.port);
    let got = agent.counts(&service);
    assert_eq!(got, expected, "agent log:\n{}", agent.log());
    drop(agent);

    // Without CAP_PERFMON the agent's preflight refuses, naming it.
    let config = dir.path().join("burnwatch.yaml");
    std::fs::write(
        &config,
        "exporters:\n  prometheus:\n    listen: 127.0.0.1:0\n",
    )
    .unwrap();
    let out = Command::new("setpriv")
        .arg(format!(
            "--bounding-set={}",
            bounding(&[CHART_CAPS[0], CHART_CAPS[2], CHART_CAPS[3]])
        ))
        .arg("--")
        .arg(&agent_bin)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without CAP_PERFMON:\n{err}");
    assert!(
        err.contains("this node cannot run burnwatch") && err.contains("CAP_PERFMON"),
        "{err}"
    );
}
