//! The Helm chart with the real tools (installed by `cargo xtask setup` in
//! target/tools): helm v3.18.0 lints and renders it with default values and
//! with every optional part on (`helm/burnwatch/ci/all-optional-values.yaml`),
//! kubernetes-validate checks the manifests against the Kubernetes 1.30 API
//! schemas, checkov scans them, values.schema.json rejects bad values, the
//! rendered ConfigMap is a config the real `burnwatch check` accepts, and
//! deploy/burnwatch.yaml is the chart's current rendering.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burnwatch_e2e::agent::binary;
use burnwatch_e2e::workspace_root;
use serde_json::Value;

const ALL_OPTIONAL: &str = "helm/burnwatch/ci/all-optional-values.yaml";

fn tool(rel: &str) -> PathBuf {
    let p = workspace_root().join("target/tools").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (installs helm, kubernetes-validate, checkov)",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let dbg = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{dbg} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm() -> Command {
    Command::new(tool("helm"))
}

/// `helm template` of `chart` into namespace burnwatch with extra args.
fn render(chart: &Path, args: &[&str]) -> String {
    ok(helm()
        .args(["template", "burnwatch"])
        .arg(chart)
        .args(["--namespace", "burnwatch"])
        .args(args))
}

fn chart() -> PathBuf {
    workspace_root().join("helm/burnwatch")
}

/// The documents of a multi-document YAML stream, as JSON values.
fn docs(yaml: &str) -> Vec<Value> {
    yaml.split("\n---")
        .map(|d| d.trim())
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn lint_render_and_validate_against_kubernetes_1_30() {
    ok(helm().args(["lint", "--strict"]).arg(chart()));
    ok(helm()
        .args(["lint", "--strict"])
        .arg(chart())
        .args(["-f", ALL_OPTIONAL]));
    let dir = tempfile::tempdir().unwrap();
    let default = render(&chart(), &[]);
    let all = render(&chart(), &["-f", ALL_OPTIONAL]);
    let files = [
        write(dir.path(), "default.yaml", &default),
        write(dir.path(), "all.yaml", &all),
    ];
    let out = ok(Command::new(tool("venv/bin/kubernetes-validate"))
        .args(["--strict", "-k", "1.30.0"])
        .args(&files));
    // Every built-in kind was checked against its schema (only the
    // ServiceMonitor CRD has none bundled).
    for kind in [
        "serviceaccount",
        "configmap",
        "clusterrole",
        "clusterrolebinding",
        "service",
        "daemonset",
        "networkpolicy",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}/burnwatch")),
            "{kind} not validated:\n{out}"
        );
    }

    let all = docs(&all);
    let kinds: Vec<&str> = all.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in [
        "ServiceAccount",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "DaemonSet",
        "ServiceMonitor",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(&k), "{k} missing in {kinds:?}");
    }
    let sm = find(&all, "ServiceMonitor")[0];
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let svc = find(&all, "Service")[0];
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    let role = find(&all, "ClusterRole")[0];
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]}]),
        "read-only pods and namespaces, nothing more"
    );
    let ds = find(&all, "DaemonSet")[0];
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        "registry.example/burnwatch@sha256:4f2a9c0e8b7d41f6a5c2e9d8b7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4"
    );
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(ds["spec"]["template"]["spec"]["hostNetwork"], true);
    assert_eq!(
        ds["spec"]["template"]["spec"]["dnsPolicy"],
        "ClusterFirstWithHostNet"
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "10%"
    );
}

#[test]
fn daemonset_is_least_privilege_by_default() {
    let default = docs(&render(&chart(), &[]));
    let ds = find(&default, "DaemonSet")[0];
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], false);
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"])
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        c["args"],
        serde_json::json!(["run", "--config", "/etc/burnwatch/burnwatch.yaml"])
    );
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let mounts: Vec<(&str, bool)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m["readOnly"] == true))
        .collect();
    for want in [
        ("/etc/burnwatch", true),
        ("/sys/kernel/tracing", false),
        ("/sys/fs/bpf", false),
        ("/host/proc", true),
        ("/host/sys/fs/cgroup", true),
        ("/var/lib/burnwatch", false),
    ] {
        assert!(mounts.contains(&want), "{want:?} not in {mounts:?}");
    }
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        [
            "/sys/kernel/tracing",
            "/sys/fs/bpf",
            "/proc",
            "/sys/fs/cgroup",
            "/var/lib/burnwatch"
        ]
    );

    // The switch for old kernels: privileged, no capability list.
    let privileged = docs(&render(&chart(), &["--set", "privileged=true"]));
    let sc = &find(&privileged, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], true);
    assert!(sc["capabilities"].is_null());
}

/// checkov's failed checks on one rendering, skipping `skips`.
fn checkov(file: &Path, skips: &[(&str, &str)]) -> std::thread::JoinHandle<(Value, String)> {
    let skip = skips
        .iter()
        .map(|(id, _)| *id)
        .collect::<Vec<_>>()
        .join(",");
    let file = file.to_path_buf();
    std::thread::spawn(move || {
        let out = run(Command::new(tool("venv/bin/checkov"))
            .args([
                "--skip-download",
                "--framework",
                "kubernetes",
                "-o",
                "json",
                "--skip-check",
            ])
            .arg(&skip)
            .arg("-f")
            .arg(&file));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "checkov JSON: {e}\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (v, text)
    })
}

/// Checks an eBPF node agent cannot pass, each with why.
const EBPF_AGENT_SKIPS: &[(&str, &str)] = &[
    (
        "CKV_K8S_17",
        "hostPID: the kernel reports host pids; the agent reads /proc/<pid> of every process on the node",
    ),
    (
        "CKV_K8S_25",
        "added capabilities: BPF and PERFMON load and attach the eBPF programs; SYS_PTRACE and DAC_READ_SEARCH read other processes' /proc/<pid>/fd",
    ),
    ("CKV_K8S_37", "capabilities assigned: same as CKV_K8S_25"),
    (
        "CKV_K8S_23",
        "root: Kubernetes grants added capabilities to uid 0's effective set only (no ambient capabilities)",
    ),
    (
        "CKV_K8S_40",
        "high UID: same as CKV_K8S_23, the agent runs as uid 0",
    ),
    (
        "CKV_K8S_38",
        "service account token: the agent watches pods and namespaces through the API",
    ),
];

/// Only in the default rendering: they depend on the user's registry. The
/// all-optional rendering sets a digest and pullPolicy Always and passes them.
const REGISTRY_SKIPS: &[(&str, &str)] = &[
    (
        "CKV_K8S_43",
        "image digest: the chart cannot know the digest of the image you build (set image.digest)",
    ),
    (
        "CKV_K8S_15",
        "pullPolicy Always: IfNotPresent is the default for a tag; with image.digest it makes no difference",
    ),
];

/// Only with `privileged: true` and `hostNetwork: true`, the opt-ins of the
/// all-optional rendering (kernels < 5.8, scraping node IPs).
const OPT_IN_SKIPS: &[(&str, &str)] = &[
    (
        "CKV_K8S_16",
        "privileged: the opt-in for kernels without CAP_BPF/CAP_PERFMON or a tracefs mount",
    ),
    (
        "CKV_K8S_20",
        "allowPrivilegeEscalation: implied by privileged",
    ),
    (
        "CKV_K8S_28",
        "NET_RAW: a privileged container has every capability",
    ),
    (
        "CKV_K8S_19",
        "hostNetwork: the opt-in for scraping node IPs",
    ),
];

#[test]
fn checkov_passes_except_what_an_ebpf_agent_must_fail() {
    let dir = tempfile::tempdir().unwrap();
    let default = write(dir.path(), "default.yaml", &render(&chart(), &[]));
    let all = write(
        dir.path(),
        "all.yaml",
        &render(&chart(), &["-f", ALL_OPTIONAL]),
    );
    let default_skips: Vec<_> = EBPF_AGENT_SKIPS
        .iter()
        .chain(REGISTRY_SKIPS)
        .copied()
        .collect();
    let all_skips: Vec<_> = EBPF_AGENT_SKIPS
        .iter()
        .chain(OPT_IN_SKIPS)
        .copied()
        .collect();
    let jobs = [
        (
            "default",
            checkov(&default, &default_skips),
            vec![
                "CKV_K8S_16",
                "CKV_K8S_20",
                "CKV_K8S_22",
                "CKV_K8S_28",
                "CKV_K8S_19",
                "CKV2_K8S_6",
            ],
        ),
        (
            "all-optional",
            checkov(&all, &all_skips),
            vec!["CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_22", "CKV2_K8S_6"],
        ),
    ];
    for (name, job, must_pass) in jobs {
        let (report, text) = job.join().unwrap();
        let results = &report["results"];
        let failed: Vec<String> = results["failed_checks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| format!("{} {} ({})", c["check_id"], c["check_name"], c["resource"]))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            failed.is_empty(),
            "{name}: checkov failures:\n{}",
            failed.join("\n")
        );
        let passed: Vec<&str> = results["passed_checks"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no passed checks in {text}"))
            .iter()
            .filter_map(|c| c["check_id"].as_str())
            .collect();
        assert!(
            passed.len() > 50,
            "{name}: only {} checks ran",
            passed.len()
        );
        for id in must_pass {
            assert!(passed.contains(&id), "{name}: {id} did not run and pass");
        }
    }
}

#[test]
fn bad_values_fail_against_the_schema() {
    let bad: &[(&[&str], &str)] = &[
        (&["--set", "port=0"], "port"),
        (&["--set", "privileged=yes"], "privileged"),
        (&["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (
            &["--set", "updateStrategy.rollingUpdate.maxUnavailable=0"],
            "maxUnavailable",
        ),
        (&["--set", "hostPaths.state=var/lib/burnwatch"], "state"),
        (&["--set", "config.tenant.header=X Tenant"], "header"),
        (
            &["--set", "config.exporters.prometheus.listen=127.0.0.1:1"],
            "prometheus",
        ),
        (&["--set", "serviceMonitor.interval=often"], "interval"),
        (&["--set", "replicas=3"], "replicas"),
    ];
    for (args, field) in bad {
        let out = run(helm()
            .args(["template", "burnwatch"])
            .arg(chart())
            .args(*args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(field),
            "{args:?}: {err}"
        );
    }
}

/// The agent's config from a rendering's ConfigMap.
fn rendered_config(rendered: &str) -> String {
    let docs = docs(rendered);
    let cm = find(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["data"]["burnwatch.yaml"].is_string())
        .expect("the config ConfigMap");
    cm["data"]["burnwatch.yaml"].as_str().unwrap().to_string()
}

fn burnwatch_check(config: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "burnwatch.yaml", config);
    let bin = binary();
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p burnwatch",
        bin.display()
    );
    run(Command::new(bin).args(["check", "--config"]).arg(path))
}

#[test]
fn rendered_config_is_accepted_by_burnwatch_check() {
    for (name, args) in [
        ("default", &[][..]),
        ("all-optional", &["-f", ALL_OPTIONAL][..]),
    ] {
        let config = rendered_config(&render(&chart(), args));
        let out = burnwatch_check(&config);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: burnwatch check rejected the rendered config:\n{config}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("metrics http://0.0.0.0:9464/metrics"),
            "{name}: {stdout}"
        );
        if name == "all-optional" {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.trim_start().starts_with("checkout")
                        && l.ends_with(
                            "server side: pods in namespace shop, pods labelled app=checkout"
                        )),
                "{stdout}"
            );
        }
    }
    // The port value moves the listener, the probes and the Service together.
    let rendered = render(&chart(), &["--set", "port=9500"]);
    let out = burnwatch_check(&rendered_config(&rendered));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0.0.0.0:9500"));
    let d = docs(&rendered);
    assert_eq!(find(&d, "Service")[0]["spec"]["ports"][0]["port"], 9500);
    assert_eq!(
        find(&d, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        9500
    );

    // A config the schema cannot judge (an SLO of an unknown service) renders
    // but the agent's own check rejects it, naming the field.
    let rendered = render(
        &chart(),
        &[
            "--set",
            "config.services[0].name=shop",
            "--set",
            "config.services[0].match.port=8080",
            "--set",
            "config.slos[0].name=x",
            "--set",
            "config.slos[0].service=nope",
            "--set",
            "config.slos[0].objective=99",
        ],
    );
    let out = burnwatch_check(&rendered_config(&rendered));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("slos[0].service"),
        "{out:?}"
    );
}

/// The PrometheusRule carries exactly what `burnwatch rules` prints for the
/// chart's rendered config, and promtool loads it; enabled without rules the
/// install fails saying what to pass.
#[test]
fn prometheus_rule_carries_burnwatch_rules_for_the_charts_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = rendered_config(&render(&chart(), &["-f", ALL_OPTIONAL]));
    let config_path = write(dir.path(), "burnwatch.yaml", &config);
    let rules = run(Command::new(binary())
        .args(["rules", "--config"])
        .arg(&config_path));
    assert!(rules.status.success(), "{rules:?}");
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(&rules_path, &rules.stdout).unwrap();
    let crd = run(Command::new(binary())
        .args(["rules", "--format", "prometheusrule", "--config"])
        .arg(&config_path));
    let crd: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&crd.stdout)).unwrap();

    let set_file = format!("prometheusRule.rules={}", rules_path.display());
    let rendered = docs(&render(
        &chart(),
        &["-f", ALL_OPTIONAL, "--set-file", &set_file],
    ));
    let pr = find(&rendered, "PrometheusRule");
    assert_eq!(pr.len(), 1);
    assert_eq!(
        pr[0]["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(
        pr[0]["spec"], crd["spec"],
        "the chart's rules are burnwatch rules' own"
    );
    assert!(
        pr[0]["spec"]["groups"].as_array().unwrap().len() >= 3,
        "recordings and alerts for the chart's SLOs"
    );
    let spec = write(
        dir.path(),
        "spec.yaml",
        // JSON is YAML: promtool reads it as a rule file.
        &serde_json::to_string_pretty(&pr[0]["spec"]).unwrap(),
    );
    let out = run(Command::new("promtool").args(["check", "rules"]).arg(&spec));
    assert!(out.status.success(), "promtool: {out:?}");

    for (args, says) in [
        (
            vec!["--set", "prometheusRule.enabled=true"],
            "needs prometheusRule.rules",
        ),
        (
            vec![
                "--set",
                "prometheusRule.enabled=true",
                "--set",
                "prometheusRule.rules=hello",
            ],
            "not a Prometheus rule file",
        ),
    ] {
        let out = run(helm().args(["template", "x"]).arg(chart()).args(&args));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn dashboards_become_sidecar_configmaps() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("burnwatch");
    ok(Command::new("cp").arg("-r").arg(chart()).arg(&copy));
    let _ = std::fs::remove_dir_all(copy.join("dashboards"));
    let none = docs(&render(&copy, &[]));
    assert!(
        find(&none, "ConfigMap")
            .iter()
            .all(|c| c["metadata"]["labels"]["grafana_dashboard"].is_null()),
        "no dashboard files, no dashboard ConfigMaps"
    );
    std::fs::create_dir(copy.join("dashboards")).unwrap();
    write(
        &copy.join("dashboards"),
        "burnwatch-slo.json",
        "{\"title\": \"burnwatch SLOs\", \"panels\": []}\n",
    );
    write(
        &copy.join("dashboards"),
        "Node_Overview.json",
        "{\"title\": \"node\"}\n",
    );
    write(&copy.join("dashboards"), "notes.txt", "not a dashboard\n");
    let two = docs(&render(
        &copy,
        &["--set", "dashboards.namespace=monitoring"],
    ));
    let dash: Vec<&Value> = find(&two, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dash.len(), 2);
    let slo = dash
        .iter()
        .find(|c| c["metadata"]["name"] == "burnwatch-dashboard-burnwatch-slo")
        .expect("burnwatch-slo dashboard");
    assert_eq!(slo["metadata"]["namespace"], "monitoring");
    let json: Value =
        serde_json::from_str(slo["data"]["burnwatch-slo.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["title"], "burnwatch SLOs");
    assert!(
        dash.iter()
            .any(|c| c["metadata"]["name"] == "burnwatch-dashboard-node-overview")
    );
    let off = docs(&render(&copy, &["--set", "dashboards.enabled=false"]));
    assert!(
        find(&off, "ConfigMap")
            .iter()
            .all(|c| c["metadata"]["labels"]["grafana_dashboard"].is_null())
    );
}

#[test]
fn plain_manifest_is_the_current_rendering() {
    // Same as `cargo xtask manifest` (xtask/src/k8s_tools.rs).
    let header_end = "  name: burnwatch\n";
    let committed = std::fs::read_to_string(workspace_root().join("deploy/burnwatch.yaml"))
        .expect("deploy/burnwatch.yaml");
    let (header, body) = committed
        .split_once(header_end)
        .expect("the manifest starts with its Namespace");
    assert!(header.contains("kind: Namespace"), "{header}");
    let rendered = render(&chart(), &[]);
    assert!(
        body == rendered,
        "deploy/burnwatch.yaml is stale: run `cargo xtask manifest` and commit it"
    );
    let out = ok(Command::new(tool("venv/bin/kubernetes-validate"))
        .args(["--strict", "-k", "1.30.0"])
        .arg(workspace_root().join("deploy/burnwatch.yaml")));
    assert!(
        out.contains("passed for resource namespace/burnwatch"),
        "{out}"
    );
}

#[test]
fn dockerfile_passes_hadolint() {
    // No Docker engine here to build it; the linter checks what it can.
    let out = run(Command::new(tool("venv/bin/hadolint")).arg(workspace_root().join("Dockerfile")));
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
