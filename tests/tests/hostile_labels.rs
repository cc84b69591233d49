//! Hostile tenant ids against a real nginx: a fuzzed set of `X-Tenant-ID`
//! values (seeded random bytes: `"`, `\`, a trailing `\`, control bytes,
//! DEL, invalid UTF-8, `",x="y`, braces, `#`, `=`, unicode, HTML and
//! terminal escapes, values up to and past the kernel's 64 bytes) beside
//! well-behaved tenants. Every one must come out as a valid label value:
//! the classic text exposition passes `promtool check metrics`, a real
//! Prometheus scrapes the OpenMetrics one (it asks for OpenMetrics) and
//! reads back every series with its exact labels, every tenant's count is
//! exact against nginx's own log, `/v1/slos` parses, the status page in
//! Chromium renders every hostile id as text (no element, no script), and
//! `burnwatch status` prints no control character.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use burnwatch_e2e::agent::{Agent, binary, counts_of};
use burnwatch_e2e::client::Conn;
use burnwatch_e2e::exposition::Exposition;
use burnwatch_e2e::nginx::Nginx;
use burnwatch_e2e::peers::{Prometheus, curl, promtool_check};
use burnwatch_e2e::{assert_same_counts, require_root, wait_for, workspace_root};

/// The kernel keeps this many bytes of a tenant value (`TENANT_MAX`).
const TENANT_MAX: usize = 64;
/// Random tenant values.
const RANDOM_TENANTS: usize = 60;
/// `environment` label of every series: a quote and a trailing backslash.
const ENVIRONMENT: &str = "st\"age\\";

/// The tenant values sent: fixed hostile ones, then seeded random bytes.
fn tenants() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [
        &b"\""[..],
        b"\\",
        b"end\\",
        b"\\\"",
        b"\",tenant=\"x",
        b"a\",x=\"y",
        b"{",
        b"}",
        b"}{",
        b"#",
        b"# EOF",
        b"=",
        b"a=b,c=\"d\"",
        b"<script>window.__pwned=1</script>",
        b"\"><img src=x onerror=\"window.__pwned=1\">",
        b"\x1b[31mred\x1b[0m\x1b]0;title\x07",
        b"\x7f",
        b"\x01\x02\x03",
        b"a\tb",
        b"\x80\xff\xfe",
        b"\xc2\x9b2J",
        "é€😀 ünïcødé".as_bytes(),
        "\u{202e}evil\u{2066}".as_bytes(),
        b"../..",
        b"a/b%2F",
        b"x",
    ]
    .iter()
    .map(|t| t.to_vec())
    .collect();
    // Exactly the kernel's maximum, and longer (cut at 64 bytes, the cut
    // landing inside a multi-byte character).
    out.push(vec![b'L'; TENANT_MAX]);
    let mut long = vec![b'M'; TENANT_MAX - 1];
    long.extend_from_slice("€€€€".as_bytes());
    out.push(long);
    let mut seed = 0x5eed_1abe_15ed_beefu64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const SPECIAL: &[u8] = b"\"\\{},=# \t\x1b\x7f";
    for i in 0..RANDOM_TENANTS {
        let len = if i % 10 == 0 {
            TENANT_MAX + (next() % 40) as usize
        } else {
            1 + (next() % TENANT_MAX as u64) as usize
        };
        let mut t: Vec<u8> = (0..len)
            .map(|_| {
                loop {
                    let b = if next() % 3 == 0 {
                        SPECIAL[(next() % SPECIAL.len() as u64) as usize]
                    } else {
                        next() as u8
                    };
                    // A header value cannot hold NUL, CR or LF.
                    if !matches!(b, 0 | b'\r' | b'\n') {
                        break b;
                    }
                }
            })
            .collect();
        // nginx and the kernel skip blanks around a value; keep the edges
        // visible so the log shows what was sent.
        for at in [0, t.len() - 1] {
            if matches!(t[at], b' ' | b'\t') {
                t[at] = b'_';
            }
        }
        out.push(t);
    }
    out
}

/// The label value the agent must make of a tenant value as nginx logged
/// it: cut at the kernel's 64 bytes, trailing blanks dropped, invalid UTF-8
/// and control characters replaced by U+FFFD.
fn label_of(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(TENANT_MAX)];
    let end = cut
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    if end == 0 {
        return "unknown".into();
    }
    String::from_utf8_lossy(&cut[..end])
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// nginx's access log escapes `"`, `\` and bytes outside 32..=126 as
/// `\xHH`; undo it.
fn nginx_unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(h) = field.get(i + 2..i + 4)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Requests per (label the agent must show, status), from nginx's log
/// (`<status> <tenant> <method> <uri>`; the tenant may hold spaces).
fn log_counts(nginx: &Nginx) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for line in nginx.access_log() {
        let (status, rest) = line.split_once(' ').expect("status");
        let tenant = rest
            .strip_suffix(" GET /ok")
            .or_else(|| rest.strip_suffix(" GET /error"))
            .unwrap_or_else(|| panic!("unexpected log line {line:?}"));
        let label = match tenant {
            "-" => "unknown".to_string(),
            t => label_of(&nginx_unescape(t)),
        };
        *out.entry((label, status.to_string())).or_insert(0) += 1;
    }
    out
}

/// Chromium on the status page: what the hostile ids became in the DOM.
const PAGE_SCRIPT: &str = r##"
import { chromium } from "playwright-core";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const errors = [], dialogs = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });
  await page.goto(process.env.STATUS_URL, { waitUntil: "load" });
  await page.waitForSelector("body[data-loaded]", { timeout: 20000 });
  await page.waitForFunction((n) => document.querySelectorAll("#series .card").length >= n,
    Number(process.env.MIN_CARDS), { timeout: 20000 });
  const seen = await page.evaluate(() => ({
    tenants: [...document.querySelectorAll("#series .card")].map((c) => c.querySelector(".tenant").textContent),
    data_tenants: [...document.querySelectorAll("#series .card")].map((c) => c.dataset.tenant),
    injected: document.querySelectorAll("img, iframe, object, embed, #series script, #series a").length,
    scripts: document.querySelectorAll("script").length,
    series_html: document.getElementById("series").innerHTML,
    pwned: window.__pwned || 0,
  }));
  seen.errors = errors;
  seen.dialogs = dialogs;
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
"##;

#[test]
fn hostile_tenant_ids_become_valid_safe_labels_everywhere() {
    require_root();
    let nginx = Nginx::start();
    let config = format!(
        "services:\n  - name: shop\n    match:\n      port: {}\n\
tenant:\n  header: X-Tenant-ID\n  missing: unknown\n  max_per_service: 1000\n\
slos:\n  - name: shop-availability\n    service: shop\n    objective: 99.9\n",
        nginx.port
    );
    // Registry labels are escaped too: a quote, a trailing backslash.
    let agent = Agent::start_with_exporters(
        &config,
        None,
        &format!("  labels: {{ environment: '{ENVIRONMENT}', node: 'n\"1' }}\n"),
    );

    // Well-behaved tenants, then each hostile one (one or two requests,
    // some failing), then the well-behaved ones again.
    let tenants = tenants();
    let mut c = Conn::open(nginx.port);
    let mut sent = 0;
    let mut send = |c: &mut Conn, tenant: &[u8], path: &str| {
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Tenant-ID: ").into_bytes();
        req.extend_from_slice(tenant);
        req.extend_from_slice(b"\r\n\r\n");
        c.send(&req);
        let status = c.read_response(false).status;
        assert_eq!(status, if path == "/ok" { 200 } else { 500 }, "{tenant:?}");
        sent += 1;
    };
    for i in 0..30 {
        send(&mut c, b"acme", if i % 5 == 0 { "/error" } else { "/ok" });
        send(&mut c, b"globex", "/ok");
    }
    send(&mut c, b"", "/ok");
    for (i, t) in tenants.iter().enumerate() {
        send(&mut c, t, "/ok");
        if i % 3 == 0 {
            send(&mut c, t, "/error");
        }
    }
    for _ in 0..10 {
        send(&mut c, b"acme", "/ok");
        send(&mut c, b"globex", "/error");
    }
    nginx.wait_for_log_lines(sent);
    let want = log_counts(&nginx);
    let labels: BTreeSet<String> = want.keys().map(|(t, _)| t.clone()).collect();
    assert!(
        labels.len() > RANDOM_TENANTS,
        "distinct labels {}",
        labels.len()
    );

    // Classic text format: parses (strictly, by promtool) and every
    // tenant's count is exact against nginx's log.
    let url = format!("http://127.0.0.1:{}/metrics", agent.metrics_port);
    let mut text = String::new();
    let mut got = BTreeMap::new();
    let exact = wait_for(Duration::from_secs(20), || {
        text = curl(&[&url]).expect("scrape");
        got = counts_of(&Exposition::parse(&text), "shop");
        (got == want).then_some(())
    });
    if exact.is_none() {
        assert_same_counts("hostile tenants (text format)", &got, &want, &agent);
    }
    assert!(!text.lines().any(|l| l == "# EOF"), "text format");
    promtool_check(&text);
    let e = Exposition::parse(&text);
    for s in e.find("burnwatch_http_requests_total", &[("service", "shop")]) {
        assert_eq!(s.labels["environment"], ENVIRONMENT, "{s:?}");
        assert_eq!(s.labels["node"], "n\"1", "{s:?}");
        assert_eq!(s.labels.len(), 6, "no injected label: {s:?}");
    }
    // Every SLO family has every tenant, with its exact id.
    let slo_tenants: BTreeSet<String> = e
        .find(
            "burnwatch_slo_events_total",
            &[("slo", "shop-availability"), ("outcome", "good")],
        )
        .map(|s| s.labels["tenant"].clone())
        .collect();
    assert_eq!(slo_tenants, labels);

    // OpenMetrics: what Prometheus asks for. Same series; a real Prometheus
    // scrapes it (a parse error takes the target down) and reads back
    // every tenant's count with its exact labels.
    let om = curl(&[
        "-H",
        "Accept: application/openmetrics-text; version=1.0.0",
        &url,
    ])
    .expect("scrape OpenMetrics");
    assert!(
        om.ends_with("# EOF\n"),
        "{}",
        &om[om.len().saturating_sub(300)..]
    );
    assert_eq!(counts_of(&Exposition::parse(&om), "shop"), want);
    let prometheus = Prometheus::start(agent.metrics_port);
    let mut last = Vec::new();
    let from_prometheus = wait_for(Duration::from_secs(45), || {
        let up = prometheus.samples("up");
        last = prometheus.samples(
            "sum by (tenant, status_code, environment, node) \
(burnwatch_http_requests_total{service=\"shop\"})",
        );
        let got: BTreeMap<(String, String), u64> = last
            .iter()
            .filter(|(l, _)| l["environment"] == ENVIRONMENT && l["node"] == "n\"1")
            .map(|(l, v)| ((l["tenant"].clone(), l["status_code"].clone()), *v as u64))
            .collect();
        (up.len() == 1 && up[0].1 == 1.0 && got == want).then_some(())
    });
    assert!(
        from_prometheus.is_some(),
        "Prometheus (scraping OpenMetrics) answered up={:?}\n{last:?}\nwant {want:?}\n\
prometheus log:\n{}\ntargets: {:?}",
        prometheus.samples("up"),
        prometheus.log(),
        curl(&[&format!(
            "http://127.0.0.1:{}/api/v1/targets",
            prometheus.port
        )])
    );

    // The JSON API parses, with every tenant's id exact.
    let slos =
        curl(&[&format!("http://127.0.0.1:{}/v1/slos", agent.metrics_port)]).expect("/v1/slos");
    let slos: serde_json::Value = serde_json::from_str(&slos).expect("/v1/slos is JSON");
    let json_tenants: BTreeSet<String> = slos["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| s["tenant"].as_str().expect("tenant").to_string())
        .collect();
    assert_eq!(json_tenants, labels);

    // `burnwatch status`: not one control character reaches the terminal.
    let status = Command::new(binary())
        .args(["status", "--agent"])
        .arg(format!("http://127.0.0.1:{}", agent.metrics_port))
        .output()
        .expect("burnwatch status");
    assert!(status.status.success(), "{status:?}");
    let shown = String::from_utf8(status.stdout).expect("UTF-8");
    assert!(shown.lines().count() > labels.len(), "{shown}");
    let bad: Vec<char> = shown
        .chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(bad.is_empty(), "{bad:?} in:\n{shown}");

    // The status page: the served HTML holds no tenant (it is static), and
    // in Chromium every hostile id is text: no element made of it, no
    // script run.
    let page = curl(&[&format!("http://127.0.0.1:{}/", agent.metrics_port)]).expect("/");
    assert!(
        !page.contains("__pwned") && !page.contains("onerror"),
        "{page}"
    );
    let browser = workspace_root().join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").exists(),
        "playwright-core is missing in {}: run `cargo xtask setup`",
        browser.display()
    );
    let out = Command::new("node")
        .current_dir(&browser)
        .args(["--input-type=module", "-e", PAGE_SCRIPT])
        .env(
            "STATUS_URL",
            format!("http://127.0.0.1:{}/", agent.metrics_port),
        )
        .env("MIN_CARDS", labels.len().to_string())
        .output()
        .expect("node (cargo xtask setup)");
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["dialogs"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["pwned"], 0, "a tenant id ran script");
    assert_eq!(seen["injected"], 0, "a tenant id made an element");
    assert_eq!(seen["scripts"], 1, "only /status.js");
    let html = seen["series_html"].as_str().unwrap_or_default();
    for tag in ["<script", "<img"] {
        assert!(!html.contains(tag), "{tag} in the rendered cards");
    }
    for key in ["tenants", "data_tenants"] {
        let shown: BTreeSet<String> = seen[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|t| t.as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(shown, labels, "{key}");
    }
}
