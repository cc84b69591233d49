use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("burnwatch.yaml"))
}

#[test]
fn issue_example_parses() {
    let c = parse(
        "services:\n  - name: shop\n    match:\n      port: 8080\ntenant:\n  header: X-Tenant-ID\n  missing: unknown\nexporters:\n  prometheus:\n    listen: 127.0.0.1:9464\n",
    )
    .unwrap();
    assert_eq!(c.services[0].name, "shop");
    assert_eq!(c.services[0].matcher.port, Some(8080));
    assert_eq!(c.exporters.prometheus.listen.to_string(), "127.0.0.1:9464");
}

#[test]
fn empty_file_is_the_default_config() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default());
    assert!(c.services.is_empty());
    assert_eq!(c.tenant.header, "X-Tenant-ID");
    assert_eq!(c.exporters.prometheus.listen.to_string(), "0.0.0.0:9464");
}

#[test]
fn unknown_field_is_named_with_its_line() {
    let e = parse("services:\n  - name: shop\n    match:\n      prot: 8080\n").unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("burnwatch.yaml:4"), "{s}");
    assert!(s.contains("prot"), "{s}");
}

#[test]
fn bad_value_is_named_with_its_line() {
    let e = parse("exporters:\n  prometheus:\n    listen: not-an-address\n").unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("burnwatch.yaml:3"), "{s}");
    let e = parse("services:\n  - name: shop\n    match:\n      port: 70000\n").unwrap_err();
    assert!(e.to_string().starts_with("burnwatch.yaml:4"), "{e}");
}

#[test]
fn validation_errors_name_field_and_line() {
    let e = parse(
        "services:\n  - name: a\n    match:\n      port: 80\n  - name: b\n    match:\n      port: 80\n",
    )
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("services[1].match.port"));
    assert_eq!(e.line, Some(7), "{e}");
    assert!(e.to_string().contains("already matched"), "{e}");

    let e = parse("services:\n  - name: a\n    match: {}\n").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("services[0].match"));
    assert_eq!(e.line, Some(3), "{e}");

    let e = parse("tenant:\n  header: \"X Tenant\"\n").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("tenant.header"));
    assert_eq!(e.line, Some(2));
}

#[test]
fn tenant_sources() {
    let c = parse("tenant:\n  from: path\n  path_prefix: /tenants/\n").unwrap();
    assert_eq!(c.tenant.from, TenantFrom::Path);
    let e = parse("tenant:\n  from: path\n").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("tenant.path_prefix"));
    let e = parse("tenant:\n  from: cookie\n").unwrap_err();
    assert!(e.to_string().starts_with("burnwatch.yaml:2"), "{e}");
    let e = parse("tenant:\n  max_per_service: 0\n").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("tenant.max_per_service"));
    assert_eq!(e.line, Some(2));
}

#[test]
fn openslo_files_add_slos() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slos.yaml"),
        "apiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: from-openslo\nspec:\n  service: shop\n  indicator:\n    metadata: {name: i}\n    spec:\n      ratioMetric:\n        bad:\n          metricSource: {type: burnwatch, spec: {availability: {}}}\n        total:\n          metricSource: {type: burnwatch, spec: {}}\n  timeWindow: [{duration: 7d, isRolling: true}]\n  budgetingMethod: Occurrences\n  objectives: [{target: 0.99}]\n",
    )
    .unwrap();
    let cfg = dir.path().join("burnwatch.yaml");
    std::fs::write(&cfg, "openslo: [slos.yaml]\n").unwrap();
    let c = Config::load(&cfg).unwrap();
    assert_eq!(c.slos.len(), 1);
    assert_eq!(c.slos[0].name, "from-openslo");
    assert_eq!(c.slo_set().iter().count(), 1);

    std::fs::write(&cfg, "openslo:\n  - missing.yaml\n").unwrap();
    let e = Config::load(&cfg).unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.to_string().contains("missing.yaml"), "{e}");
}

#[test]
fn api_auth_and_tls_files_are_checked_with_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let c = parse(&format!(
        "api:\n  auth:\n    bearer_token_file: {}\n",
        token.display()
    ))
    .unwrap();
    assert_eq!(
        c.api.auth.unwrap().bearer_token_file,
        token,
        "the token file is kept as given"
    );
    assert_eq!(api::read_token(&token).unwrap(), b"s3cret");
    assert_eq!(parse("").unwrap().api, api::Api::default());

    let missing = dir.path().join("nope");
    let e = parse(&format!(
        "tenant:\n  missing: unknown\napi:\n  auth:\n    bearer_token_file: {}\n",
        missing.display()
    ))
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("api.auth.bearer_token_file"));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.to_string().contains("cannot read"), "{e}");

    std::fs::write(&token, "\n").unwrap();
    let e = parse(&format!(
        "api:\n  auth:\n    bearer_token_file: {}\n",
        token.display()
    ))
    .unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().contains("empty"), "{e}");
    std::fs::write(&token, "two words").unwrap();
    assert!(
        parse(&format!(
            "api:\n  auth:\n    bearer_token_file: {}\n",
            token.display()
        ))
        .is_err()
    );

    // A misspelt key is named with its line.
    let e = parse("api:\n  auth:\n    token_file: /x\n").unwrap_err();
    assert!(e.to_string().starts_with("burnwatch.yaml:3"), "{e}");
    assert!(e.to_string().contains("token_file"), "{e}");

    // TLS: files that are not PEM name the field that points at them.
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let e = parse(&format!(
        "api:\n  tls:\n    cert_file: {0}\n    key_file: {0}\n",
        not_pem.display()
    ))
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("api.tls.cert_file"));
    assert_eq!(e.line, Some(3), "{e}");
    let e = parse("api:\n  tls:\n    cert_file: /x.pem\n").unwrap_err();
    assert!(e.to_string().contains("key_file"), "{e}");
}

#[test]
fn api_tls_loads_a_certificate_and_its_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |name: &str| {
        let ok = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:P-256")
            .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
            .arg(dir.path().join(format!("{name}.key")))
            .arg("-out")
            .arg(dir.path().join(format!("{name}.crt")))
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| {
            (
                dir.path().join(format!("{name}.crt")),
                dir.path().join(format!("{name}.key")),
            )
        })
    };
    let (Some((crt, key)), Some((_, other_key))) = (openssl("a"), openssl("b")) else {
        eprintln!("no openssl: skipped");
        return;
    };
    let yaml = |crt: &Path, key: &Path| {
        format!(
            "api:\n  tls:\n    cert_file: {}\n    key_file: {}\n",
            crt.display(),
            key.display()
        )
    };
    let c = parse(&yaml(&crt, &key)).unwrap();
    assert!(api::load_tls(c.api.tls.as_ref().unwrap()).is_ok());
    let e = parse(&yaml(&crt, &other_key)).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("api.tls.key_file"));
    assert_eq!(e.line, Some(4), "{e}");
    // The key where the certificate belongs.
    let e = parse(&yaml(&key, &key)).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("api.tls.cert_file"), "{e}");
}

#[test]
fn listen_override_takes_an_address_or_a_bare_ip() {
    let p = |s: &str| api::parse_listen_override(s, 9464).map(|a| a.to_string());
    assert_eq!(p("10.1.2.3").as_deref(), Some("10.1.2.3:9464"));
    assert_eq!(p("10.1.2.3:9500").as_deref(), Some("10.1.2.3:9500"));
    assert_eq!(p("fd00::7").as_deref(), Some("[fd00::7]:9464"));
    assert_eq!(p("[fd00::7]").as_deref(), Some("[fd00::7]:9464"));
    assert_eq!(p("[fd00::7]:9500").as_deref(), Some("[fd00::7]:9500"));
    assert_eq!(p("node-1:9464"), None);
    assert_eq!(p("10.1.2.3:99999"), None);
}
