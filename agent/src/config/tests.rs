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
