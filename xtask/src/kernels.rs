//! `cargo xtask test-kernels`: boots other Linux kernels under qemu and
//! checks the agent there.
//!
//! The host's kernel is one build of one version; the agent must also load
//! (and count correctly) on the kernels users run. Debian's registries carry
//! them: for every kernel series (major.minor) that Debian has as a
//! `linux-image-*-cloud-amd64` package, the newest one is downloaded,
//! unpacked into `target/kernels/<release>/` and booted with an initramfs
//! built here from the host's own binaries (busybox, nginx, curl and the
//! release agent). In the VM, `/init` runs `burnwatch verifier` (every
//! program's verifier statistics on that kernel), starts nginx and the
//! agent, sends a known mix of requests with curl, and prints the agent's
//! metrics, nginx's access log and the agent's log between markers on the
//! serial console. The host compares the agent's counts with nginx's, per
//! (tenant, method, status), and nginx's with what curl sent (so a failure
//! of the harness is never taken for one of the agent).
//!
//! qemu runs under TCG unless KVM reaches init within seconds: on the
//! project's machines `/dev/kvm` exists but guests hang or die in it.
//!
//! apt runs on a private state directory (`target/kernels/apt/`) with its
//! own sources list that includes `<codename>-backports`: the host's
//! sources and package lists stay as they are, so nothing on the host is
//! ever upgraded from backports.
//!
//! The cloud kernels need no module here: the VM has no disk and no network
//! device (loopback only), and BPF, BTF, tracefs, the syscall tracepoints,
//! devtmpfs, the initramfs decompressor and the serial console are built in.
//! [`missing_config`] checks that from each kernel's `config` file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{elapsed, step};

#[derive(clap::Args)]
pub struct Args {
    /// Boot this kernel image (a bzImage, e.g. /boot/vmlinuz-...) instead of
    /// Debian's; repeatable. A `config-<release>` beside it is checked too.
    #[arg(long = "kernel", value_name = "VMLINUZ")]
    kernels: Vec<PathBuf>,
    /// Only Debian kernels of these series or versions (comma-separated),
    /// e.g. `--only 6.1`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seconds the agent may take to become ready in the VM (and `burnwatch
    /// verifier` to load every program). Under TCG the verifier runs many
    /// times slower than natively: a program at the 1M-instruction limit
    /// takes about a minute.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// `auto`: KVM if it boots the first kernel within seconds, else TCG.
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// The nginx server the VM runs: the agent names auto-detected services
/// `<comm>:<port>`.
const NGINX_SERVICE: &str = "nginx:8080";
/// The agent's tenant label for requests without X-Tenant-ID (its default
/// `tenant.missing`); nginx logs those as `-`.
const MISSING_TENANT: &str = "unknown";
/// Every line `/init` prints for the host starts with this.
const MARK: &str = "==BURNWATCH==";
/// The kernel options the VM and the agent need built in (`=y`): a module
/// would be out of reach, the initramfs carries none.
const REQUIRED_CONFIG: &[&str] = &[
    "BLK_DEV_INITRD",
    "RD_GZIP",
    "DEVTMPFS",
    "SERIAL_8250_CONSOLE",
    "INET",
    "CGROUPS",
    "BPF_SYSCALL",
    "BPF_JIT",
    "BPF_EVENTS",
    "DEBUG_INFO_BTF",
    "FTRACE_SYSCALLS",
];

impl Args {
    /// What `cargo xtask test` runs: every Debian kernel of the matrix.
    pub fn all() -> Args {
        Args {
            kernels: Vec::new(),
            only: Vec::new(),
            timeout: 900,
            accel: Accel::Auto,
        }
    }
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    let base = root.join("target/kernels");
    std::fs::create_dir_all(&base)?;
    let kernels = if args.kernels.is_empty() {
        debian_kernels(&base, &args.only)?
    } else {
        args.kernels
            .iter()
            .map(|p| local_kernel(&base, p))
            .collect::<Result<_>>()?
    };
    if kernels.is_empty() {
        bail!("no kernel to test (--only {})", args.only.join(","));
    }
    step("kernels chosen:");
    for k in &kernels {
        eprintln!("    {}: {}", k.release, k.origin);
        match std::fs::read_to_string(&k.config) {
            Ok(config) => match &missing_config(&config)[..] {
                [] => eprintln!(
                    "        built in: {} (no module needed)",
                    REQUIRED_CONFIG.join(" ")
                ),
                missing => eprintln!("        WARNING: not built in: {}", missing.join(" ")),
            },
            Err(_) => eprintln!("        (no config file to check)"),
        }
    }

    let initramfs = build_initramfs(root, &base.join("initramfs"))?;

    let mut accel = match args.accel {
        Accel::Auto if !Path::new("/dev/kvm").exists() => Accel::Tcg,
        a => a,
    };
    let mut results = Vec::new();
    for k in &kernels {
        step(&format!("booting {} ({accel:?})", k.release));
        let r = test_kernel(k, &initramfs, &mut accel, args.timeout)?;
        print_details(&r);
        results.push(r);
    }

    step("results");
    print!("{}", result_table(&results));
    let failed = results.iter().filter(|r| r.outcome.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {} kernels failed", results.len());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Kernels: Debian packages through a private apt state

/// A kernel to boot.
struct Kernel {
    /// `uname -r` (for a local image, its file name without `vmlinuz-`).
    release: String,
    /// Where it came from, for the listing: the package and its version.
    origin: String,
    vmlinuz: PathBuf,
    config: PathBuf,
    /// `target/kernels/<release>/`: the console log goes there.
    dir: PathBuf,
}

fn local_kernel(base: &Path, vmlinuz: &Path) -> Result<Kernel> {
    let vmlinuz = std::fs::canonicalize(vmlinuz)
        .with_context(|| format!("--kernel {}", vmlinuz.display()))?;
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let name = file_name(&vmlinuz);
    // /boot/vmlinuz-<release>; else a bare `vmlinuz` or `bzImage` is named
    // after its directory (target/kernels/<release>/vmlinuz).
    let release = match name.strip_prefix("vmlinuz-") {
        Some(r) => r.to_string(),
        None => vmlinuz
            .parent()
            .map(file_name)
            .filter(|d| !d.is_empty())
            .map_or(name.clone(), |d| format!("{d}-{name}")),
    };
    let dir = base.join("local").join(&release);
    std::fs::create_dir_all(&dir)?;
    let config = [format!("config-{release}"), "config".into()]
        .iter()
        .map(|c| vmlinuz.with_file_name(c))
        .find(|c| c.exists())
        .unwrap_or_default();
    Ok(Kernel {
        config,
        origin: vmlinuz.display().to_string(),
        release,
        vmlinuz,
        dir,
    })
}

/// apt with its own sources, lists and cache under `dir`.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: PathBuf) -> Result<Apt> {
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let codename = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                    .map(|c| c.trim_matches('"').to_string())
            })
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "bookworm".into());
        let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
        let sources = format!(
            "deb {key} http://deb.debian.org/debian {codename} main\n\
             deb {key} http://deb.debian.org/debian {codename}-updates main\n\
             deb {key} http://deb.debian.org/debian {codename}-backports main\n\
             deb {key} http://deb.debian.org/debian-security {codename}-security main\n"
        );
        let path = dir.join("sources.list");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(&sources) {
            std::fs::write(&path, sources)?;
        }
        Ok(Apt { dir })
    }

    fn command(&self, program: &str) -> Command {
        let d = self.dir.display();
        let mut c = Command::new(program);
        for o in [
            format!("Dir::Etc::SourceList={d}/sources.list"),
            format!("Dir::Etc::SourceParts={d}/sources.list.d"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            // Only names and files are asked for: the host's installed
            // packages do not matter.
            "Dir::State::status=/dev/null".into(),
            "Acquire::Languages=none".into(),
            // _apt cannot write into target/.
            "APT::Sandbox::User=root".into(),
        ] {
            c.arg("-o").arg(o);
        }
        c
    }

    fn update(&self) -> Result<()> {
        let status = self
            .command("apt-get")
            .args(["update", "-qq"])
            .status()
            .context("starting apt-get")?;
        if !status.success() {
            bail!("apt-get update failed ({status})");
        }
        Ok(())
    }

    /// Names of the cloud kernel images the sources carry.
    fn cloud_kernels(&self) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["search", "--names-only", "^linux-image-.*-cloud-amd64$"])
            .output()
            .context("starting apt-cache")?;
        if !out.status.success() {
            bail!("apt-cache search failed ({})", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(" - ").next())
            .map(|n| n.trim().to_string())
            .collect())
    }

    /// `apt-get download` into `dir`; the .deb's path.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        let status = self
            .command("apt-get")
            .args(["download", "-qq", package])
            .current_dir(dir)
            .status()
            .context("starting apt-get")?;
        if !status.success() {
            bail!("apt-get download {package} failed ({status})");
        }
        std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

/// The newest cloud kernel of every series Debian carries (filtered by
/// `only`), downloaded and unpacked unless `target/kernels/<release>/`
/// already has it. Offline, the kernels already there are used.
fn debian_kernels(base: &Path, only: &[String]) -> Result<Vec<Kernel>> {
    let apt = Apt::new(base.join("apt"))?;
    step("apt-get update (private state in target/kernels/apt: the host's apt is untouched)");
    let packages = match apt.update().and_then(|()| apt.cloud_kernels()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("    {e:#}: using the kernels already in {}", base.display());
            std::fs::read_dir(base)?
                .flatten()
                .filter(|e| e.path().join("vmlinuz").exists())
                .filter_map(|e| std::fs::read_to_string(e.path().join("package")).ok())
                .filter_map(|p| p.split_whitespace().next().map(str::to_owned))
                .collect()
        }
    };
    pick_kernels(&packages, only)
        .into_iter()
        .map(|package| fetch_kernel(&apt, base, &package))
        .collect()
}

/// `linux-image-6.12.118+deb12-cloud-amd64` -> `6.12.118+deb12`. Debug
/// symbols and unsigned twins end otherwise and are left out.
fn cloud_kernel_version(package: &str) -> Option<&str> {
    let v = package
        .strip_prefix("linux-image-")?
        .strip_suffix("-cloud-amd64")?;
    v.starts_with(|c: char| c.is_ascii_digit()).then_some(v)
}

/// The numbers of a kernel version in order, its sort key: `6.1.0-57` ->
/// [6, 1, 0, 57], `6.12.90+deb12.1` -> [6, 12, 90, 12, 1].
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// `6.1` selects `6.1.0-57`, not `6.12.118`.
fn matches_filter(version: &str, filter: &str) -> bool {
    version
        .strip_prefix(filter)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The newest package of each kernel series, oldest series first.
fn pick_kernels(packages: &[String], only: &[String]) -> Vec<String> {
    let mut newest: BTreeMap<Vec<u64>, (Vec<u64>, &str)> = BTreeMap::new();
    for p in packages {
        let Some(v) = cloud_kernel_version(p) else {
            continue;
        };
        if !only.is_empty() && !only.iter().any(|f| matches_filter(v, f)) {
            continue;
        }
        let key = version_key(v);
        let series = key.iter().take(2).copied().collect();
        let slot = newest.entry(series).or_insert((key.clone(), p));
        if key > slot.0 {
            *slot = (key, p);
        }
    }
    newest.into_values().map(|(_, p)| p.to_string()).collect()
}

fn fetch_kernel(apt: &Apt, base: &Path, package: &str) -> Result<Kernel> {
    let release = package
        .strip_prefix("linux-image-")
        .context("not a kernel image package")?
        .to_string();
    let dir = base.join(&release);
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.exists() {
        step(&format!("downloading {package}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let deb = apt.download(package, &dir)?;
        let tree = dir.join("deb");
        let deb_arg = deb.display().to_string();
        let tree_arg = tree.display().to_string();
        crate::cmd("dpkg-deb", &["-x", &deb_arg, &tree_arg])?;
        let boot = tree.join("boot");
        std::fs::copy(boot.join(format!("config-{release}")), dir.join("config"))?;
        // vmlinuz last: its presence marks a complete cache entry. The
        // modules (most of the package) are not needed: see the module doc.
        std::fs::copy(boot.join(format!("vmlinuz-{release}")), &vmlinuz)?;
        let file = deb.file_name().unwrap_or_default().to_string_lossy();
        std::fs::write(dir.join("package"), format!("{package} {file}\n"))?;
        std::fs::remove_dir_all(&tree)?;
        std::fs::remove_file(&deb)?;
    }
    // `<package> <package>_<version>_amd64.deb`
    let origin = std::fs::read_to_string(dir.join("package"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_owned))
        .and_then(|deb| deb.split('_').nth(1).map(|v| format!("{package} {v}")))
        .unwrap_or_else(|| package.to_string());
    Ok(Kernel {
        release,
        origin,
        config: dir.join("config"),
        vmlinuz,
        dir,
    })
}

/// The options of [`REQUIRED_CONFIG`] that a kernel config does not build
/// in.
fn missing_config(config: &str) -> Vec<&'static str> {
    REQUIRED_CONFIG
        .iter()
        .copied()
        .filter(|o| !config.lines().any(|l| l == format!("CONFIG_{o}=y")))
        .collect()
}

// ---------------------------------------------------------------------------
// The initramfs: host binaries and their libraries, in a newc cpio

/// What one archive member is made of.
enum Node {
    Dir,
    /// A host file, copied with its contents (a symlink is followed).
    File(PathBuf, u32),
    Data(Vec<u8>, u32),
    Symlink(String),
    CharDev(u32, u32),
}

/// An initramfs under construction: paths without a leading `/`.
#[derive(Default)]
struct Archive {
    nodes: BTreeMap<String, Node>,
}

impl Archive {
    /// Adds `path`, and its parent directories first (the kernel's
    /// unpacker does not create them).
    fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/');
        let mut parent = String::new();
        for part in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes.entry(parent.clone()).or_insert(Node::Dir);
        }
        self.nodes.insert(path.to_string(), node);
    }

    fn text(&mut self, path: &str, text: &str, mode: u32) {
        self.add(path, Node::Data(text.as_bytes().to_vec(), mode));
    }

    /// A host binary at the same path, with every shared library `ldd`
    /// names (and the dynamic loader).
    fn binary(&mut self, host: &Path, at: &str) -> Result<()> {
        self.add(at, Node::File(host.to_path_buf(), 0o755));
        // A static binary makes ldd fail: it needs nothing.
        let out = Command::new("ldd").arg(host).output().context("ldd")?;
        if out.status.success() {
            for lib in parse_ldd(&String::from_utf8_lossy(&out.stdout))
                .with_context(|| format!("ldd {}", host.display()))?
            {
                let at = lib.display().to_string();
                self.add(&at, Node::File(lib, 0o755));
            }
        }
        Ok(())
    }

    /// What the archive is made of: equal stamps, equal archives.
    fn stamp(&self) -> String {
        let mut s = String::new();
        for (path, node) in &self.nodes {
            let what = match node {
                Node::Dir => "dir".to_string(),
                Node::File(src, mode) => {
                    let m = std::fs::metadata(src).ok();
                    let mtime = m
                        .as_ref()
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .unwrap_or_default();
                    format!(
                        "file {} {mode:o} {} {}",
                        src.display(),
                        m.map(|m| m.len()).unwrap_or(0),
                        mtime.as_nanos()
                    )
                }
                Node::Data(bytes, mode) => format!("data {mode:o} {:016x}", fnv1a(bytes)),
                Node::Symlink(target) => format!("symlink {target}"),
                Node::CharDev(ma, mi) => format!("chardev {ma} {mi}"),
            };
            s.push_str(&format!("{path} {what}\n"));
        }
        s
    }

    /// The archive in the kernel's initramfs format (cpio "newc").
    fn write(&self, w: &mut impl Write) -> Result<()> {
        for (ino, (path, node)) in self.nodes.iter().enumerate() {
            let ino = ino as u32 + 1;
            match node {
                Node::Dir => newc_entry(w, ino, 0o040755, path, &[], (0, 0))?,
                Node::Data(bytes, mode) => {
                    newc_entry(w, ino, 0o100000 | mode, path, bytes, (0, 0))?
                }
                Node::Symlink(target) => {
                    newc_entry(w, ino, 0o120777, path, target.as_bytes(), (0, 0))?
                }
                Node::CharDev(ma, mi) => newc_entry(w, ino, 0o020600, path, &[], (*ma, *mi))?,
                Node::File(src, mode) => {
                    let bytes =
                        std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
                    newc_entry(w, ino, 0o100000 | mode, path, &bytes, (0, 0))?
                }
            }
        }
        newc_entry(w, 0, 0, "TRAILER!!!", &[], (0, 0))?;
        Ok(())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One cpio "newc" member: a 110-byte ASCII header, the name, the data,
/// each padded to 4 bytes. Owner root, mtime 0 (reproducible).
fn newc_entry(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    name: &str,
    data: &[u8],
    (rdev_major, rdev_minor): (u32, u32),
) -> std::io::Result<()> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{rdev_major:08x}{rdev_minor:08x}{:08x}{:08x}",
        0,
        0,
        0,
        data.len(),
        0,
        0,
        name.len() + 1,
        0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let pad = |n: usize| (4 - n % 4) % 4;
    w.write_all(&[0; 3][..pad(header.len() + name.len() + 1)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad(data.len())])?;
    Ok(())
}

/// The libraries in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x..)`
/// and the loader, `/lib64/ld-linux-x86-64.so.2 (0x..)`.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} not found", name.trim());
                }
                rest.split_whitespace().next()
            }
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

const NGINX_CONF: &str = r#"# nginx of the test-kernels VM (xtask/src/kernels.rs).
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log notice;
events { worker_connections 64; }
http {
    # The host tallies this log per (tenant, method, status).
    log_format t '$http_x_tenant_id $request_method $status';
    access_log /var/log/nginx/access.log t;
    keepalive_requests 1000;
    server {
        listen 127.0.0.1:8080;
        location / { return 200 "ok\n"; }
        location /err { return 503; }
        location /nf { return 404; }
    }
}
"#;

/// The agent's defaults do the rest: every HTTP/1.x server, tenant from
/// X-Tenant-ID.
const AGENT_CONFIG: &str = "exporters:
  prometheus:
    listen: 127.0.0.1:9464
state:
  dir: /var/lib/burnwatch
";

/// PID 1 of the VM. `@TRAFFIC@` becomes [`traffic_script`]. tracefs is
/// deliberately not mounted: the agent mounts it when it is missing (as on
/// a freshly booted host), and that path is worth testing on every kernel.
const INIT: &str = r#"#!/bin/sh
# PID 1 of the test-kernels VM (generated by xtask/src/kernels.rs): prints
# "==BURNWATCH== ..." markers and blocks for the host, then powers off.
export PATH=/bin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
mark() { echo "==BURNWATCH== $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
secs() { s=$(up); echo "${s%.*}"; }
block() { echo "==BURNWATCH== begin $1"; [ -f "$2" ] && awk 1 "$2"; echo "==BURNWATCH== end $1"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf

timeout=600
for a in $(cat /proc/cmdline); do
    case "$a" in bw.timeout=*) timeout="${a#bw.timeout=}" ;; esac
done

main() {
    mark "init kernel=$(uname -r) cpus=$(nproc) uptime=$(up)"
    ip link set lo up
    mkdir -p /var/log/nginx /var/lib/nginx /var/lib/burnwatch
    if ! nginx -c /etc/nginx/nginx.conf; then
        mark "nginx failed"
        block nginx-error /var/log/nginx/error.log
        return
    fi
    mark "nginx started uptime=$(up)"

    # Every program's verifier statistics on this kernel, and why each
    # rejected one was rejected (the agent itself stops at the first). Its
    # exit status is only reported: its time budget is for native runs, not
    # TCG. Older agents lack the subcommand.
    if burnwatch verifier --help >/dev/null 2>&1; then
        mark "verifier start uptime=$(up)"
        BURNWATCH_VERIFIER_LOG=1 timeout "$timeout" burnwatch verifier >/tmp/verifier.txt 2>&1
        mark "verifier done status=$? uptime=$(up)"
        block verifier /tmp/verifier.txt
    fi

    mark "agent start uptime=$(up)"
    NO_COLOR=1 burnwatch run --config /etc/burnwatch.yaml >/tmp/agent.log 2>&1 &
    agent=$!
    start=$(secs)
    said=$start
    ready=no
    while :; do
        if curl -sf -o /dev/null http://127.0.0.1:9464/readyz; then
            ready=yes
            mark "agent ready uptime=$(up)"
            break
        fi
        if ! kill -0 $agent 2>/dev/null; then
            wait $agent
            mark "agent exited status=$? uptime=$(up)"
            break
        fi
        now=$(secs)
        if [ $((now - start)) -ge "$timeout" ]; then
            mark "agent timeout after=${timeout}s uptime=$(up)"
            break
        fi
        if [ $((now - said)) -ge 30 ]; then
            said=$now
            mark "waiting for the agent after=$((now - start))s last_log=\"$(tail -n 1 /tmp/agent.log | cut -c1-120)\""
        fi
        sleep 1
    done

    # The traffic goes out whatever the agent did: nginx's log shows the
    # harness itself works.
@TRAFFIC@
    want=$(wc -l < /var/log/nginx/access.log)
    mark "traffic sent nginx=$want uptime=$(up)"

    if [ $ready = yes ]; then
        # The agent reads the kernel's counts once a second: wait until it
        # has them all (at least 3 s, at most 20 s).
        i=0
        while [ $i -lt 20 ]; do
            sleep 1
            i=$((i + 1))
            curl -s -o /tmp/metrics http://127.0.0.1:9464/metrics
            got=$(awk '/^burnwatch_http_requests_total\{/ && /service="nginx:8080"/ { s += $NF } END { print s + 0 }' /tmp/metrics)
            [ $i -ge 3 ] && [ "$got" -ge "$want" ] && break
        done
        mark "scraped after=${i}s agent=$got nginx=$want"
        grep -E '^burnwatch_(http_requests_total|dropped_events|capability)' /tmp/metrics > /tmp/requests
        block metrics /tmp/requests
    fi
    block access-log /var/log/nginx/access.log
    sort /var/log/nginx/access.log | uniq -c > /tmp/tally
    block access-tally /tmp/tally

    if kill -0 $agent 2>/dev/null; then
        kill -TERM $agent
        i=0
        while kill -0 $agent 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
        kill -KILL $agent 2>/dev/null
        wait $agent
        mark "agent stopped status=$?"
    fi
    block agent-log /tmp/agent.log
}

main
mark "done uptime=$(up)"
poweroff -f
"#;

/// One batch of requests, sent by one curl (several URLs in one curl share
/// a keep-alive connection) or by one curl per request.
struct Batch {
    tenant: Option<&'static str>,
    /// POST sends a small body (`-d`).
    post: bool,
    path: &'static str,
    /// What nginx.conf answers on `path`.
    status: u16,
    requests: u32,
    keep_alive: bool,
}

const fn batch(
    t: Option<&'static str>,
    path: &'static str,
    status: u16,
    n: u32,
    ka: bool,
) -> Batch {
    Batch {
        tenant: t,
        post: false,
        path,
        status,
        requests: n,
        keep_alive: ka,
    }
}

/// The known mix: statuses 200, 404 and 503, GET and POST, a request
/// without a tenant, keep-alive and fresh connections.
const TRAFFIC: &[Batch] = &[
    batch(Some("a"), "/", 200, 10, true),
    batch(Some("a"), "/", 200, 10, false),
    batch(Some("b"), "/err", 503, 4, true),
    batch(Some("b"), "/err", 503, 3, false),
    batch(Some("a"), "/nf", 404, 5, true),
    Batch {
        post: true,
        ..batch(Some("c"), "/", 200, 3, true)
    },
    batch(None, "/", 200, 2, true),
];

fn traffic_script() -> String {
    let mut s = String::new();
    for b in TRAFFIC {
        let mut curl = "curl -s".to_string();
        if let Some(t) = b.tenant {
            curl.push_str(&format!(" -H 'X-Tenant-ID: {t}'"));
        }
        if b.post {
            curl.push_str(" -d x=1");
        }
        let url = format!("http://127.0.0.1:8080{}", b.path);
        if b.keep_alive {
            let urls = vec![url; b.requests as usize].join(" ");
            s.push_str(&format!("    {curl} {urls} >/dev/null\n"));
        } else {
            s.push_str(&format!(
                "    for i in $(seq {}); do {curl} {url} >/dev/null; done\n",
                b.requests
            ));
        }
    }
    s
}

/// Requests per (tenant, method, status).
type Tally = BTreeMap<(String, String, u16), u64>;

/// What [`TRAFFIC`] should leave in nginx's access log.
fn intended_tally() -> Tally {
    let mut t = Tally::new();
    for b in TRAFFIC {
        let tenant = b.tenant.unwrap_or(MISSING_TENANT).to_string();
        let method = if b.post { "POST" } else { "GET" }.to_string();
        *t.entry((tenant, method, b.status)).or_default() += u64::from(b.requests);
    }
    t
}

/// Builds `dir/initramfs.cpio.gz` unless its stamp says the inputs (the
/// agent binary above all) are unchanged.
fn build_initramfs(root: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let agent = root.join("target/release/burnwatch");
    if !agent.exists() {
        bail!("{} is missing (cargo xtask build)", agent.display());
    }
    // The config must stay valid as the agent's schema changes.
    let config = dir.join("burnwatch.yaml");
    std::fs::write(&config, AGENT_CONFIG)?;
    let checked = Command::new(&agent)
        .args(["check", "--config"])
        .arg(&config)
        .output()?;
    if !checked.status.success() {
        bail!(
            "the VM's agent config is invalid: {}",
            String::from_utf8_lossy(&checked.stderr).trim()
        );
    }

    let mut a = Archive::default();
    for d in "proc sys dev tmp run root var/log var/lib".split(' ') {
        a.add(d, Node::Dir);
    }
    // The kernel opens it for init's stdio before devtmpfs is mounted.
    a.add("dev/console", Node::CharDev(5, 1));
    a.binary(Path::new("/bin/busybox"), "/bin/busybox")?;
    a.add("bin/sh", Node::Symlink("busybox".into()));
    a.binary(Path::new("/usr/sbin/nginx"), "/usr/sbin/nginx")?;
    a.binary(Path::new("/usr/bin/curl"), "/usr/bin/curl")?;
    a.binary(&agent, "/usr/bin/burnwatch")?;
    a.text(
        "init",
        &INIT.replace("@TRAFFIC@", traffic_script().trim_end()),
        0o755,
    );
    a.text(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n\
         www-data:x:33:33:www-data:/var/www:/bin/false\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    a.text(
        "etc/group",
        "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n",
        0o644,
    );
    a.text(
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\n",
        0o644,
    );
    a.text("etc/hosts", "127.0.0.1 localhost\n", 0o644);
    a.text("etc/nginx/nginx.conf", NGINX_CONF, 0o644);
    a.text("etc/burnwatch.yaml", AGENT_CONFIG, 0o644);

    let image = dir.join("initramfs.cpio.gz");
    let stamp_path = dir.join("stamp");
    let stamp = a.stamp();
    if image.exists() && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(&stamp) {
        step(&format!("initramfs up to date: {}", image.display()));
        return Ok(image);
    }
    step(&format!("building {}", image.display()));
    let _ = std::fs::remove_file(&stamp_path);
    let mut gzip = Command::new("gzip")
        .args(["-6", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(File::create(&image)?)
        .spawn()
        .context("starting gzip")?;
    {
        let mut stdin = std::io::BufWriter::new(gzip.stdin.take().context("gzip stdin")?);
        a.write(&mut stdin)?;
        stdin.flush()?;
    }
    if !gzip.wait()?.success() {
        bail!("gzip failed");
    }
    // What went in, for a person looking at the image.
    std::fs::write(dir.join("manifest.txt"), &stamp)?;
    std::fs::write(&stamp_path, &stamp)?;
    eprintln!(
        "    {} MiB",
        std::fs::metadata(&image)?.len().div_ceil(1 << 20)
    );
    Ok(image)
}

// ---------------------------------------------------------------------------
// Booting

/// How a qemu run ended.
#[derive(Debug, PartialEq)]
enum End {
    Exited,
    TimedOut,
    /// KVM was tried and did not reach init quickly.
    KvmFailed(String),
}

struct Boot {
    console: String,
    end: End,
    wall: Duration,
    /// When each marker appeared (host time since qemu started).
    marks: Vec<(Duration, String)>,
}

/// KVM must reach init within this long, or TCG takes over.
const KVM_PROBE: Duration = Duration::from_secs(10);

fn boot(k: &Kernel, initramfs: &Path, accel: Accel, timeout: u64) -> Result<Boot> {
    let mut qemu = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm | Accel::Auto => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => qemu.args(["-accel", "tcg"]),
    };
    // Two CPUs: the agent's per-CPU maps get summed. No NIC: loopback only.
    // One vCPU: with two, TCG sometimes runs a guest instruction while the
    // other vCPU patches it (jump labels go through int3), and the guest
    // dies at boot ("Oops: int3" in enqueue_timer, seen once in CI).
    qemu.args("-m 2048 -smp 1 -nographic -no-reboot -nic none".split(' '))
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1: a kernel panic reboots, and -no-reboot makes that an exit.
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet bw.timeout={timeout}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut log = File::create(k.dir.join("console.log"))?;
    writeln!(log, "# {qemu:?}")?;

    let started = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers = [
        forward(child.stdout.take().context("qemu stdout")?, tx.clone()),
        forward(child.stderr.take().context("qemu stderr")?, tx),
    ];
    // `burnwatch verifier` and the agent may each take `timeout`; boot,
    // traffic and shutdown fit in the rest.
    let deadline = started + Duration::from_secs(2 * timeout + 300);
    let probe = accel == Accel::Auto;
    let mut console = String::new();
    let mut marks = Vec::new();
    let end = loop {
        let now = Instant::now();
        if probe && marks.is_empty() && now > started + KVM_PROBE {
            break End::KvmFailed(format!("no init after {}", elapsed(KVM_PROBE)));
        }
        if now > deadline {
            break End::TimedOut;
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                writeln!(log, "{line}")?;
                console.push_str(&line);
                console.push('\n');
                if probe && line.contains("KVM internal error") {
                    break End::KvmFailed(line);
                }
                if let Some(m) = marker(&line) {
                    let at = started.elapsed();
                    if !m.starts_with("begin ") && !m.starts_with("end ") {
                        eprintln!("    [{} +{:.1}s] {m}", k.release, at.as_secs_f64());
                    }
                    marks.push((at, m.to_string()));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: qemu is gone. Before init under the KVM
            // probe, KVM failed (on AMD EPYC hosts qemu aborts at once:
            // "failed to set MSR 0x10a"): TCG is tried instead.
            Err(mpsc::RecvTimeoutError::Disconnected) if probe && marks.is_empty() => {
                break End::KvmFailed("qemu exited before init".into());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break End::Exited,
        }
    };
    if end != End::Exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    Ok(Boot {
        console,
        end,
        wall: started.elapsed(),
        marks,
    })
}

fn forward(
    pipe: impl std::io::Read + Send + 'static,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        // Lines, not UTF-8 strings: firmware prints stray bytes.
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches('\n')
                .to_string();
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    })
}

struct KernelResult {
    release: String,
    /// Everything the VM printed.
    console: PathBuf,
    accel: Accel,
    wall: Duration,
    /// Host time from qemu's start to init.
    boot: Option<Duration>,
    /// Host time `burnwatch verifier` took to load every program once.
    verifier: Option<Duration>,
    /// Host time from the agent's start to its `/readyz` (program loads,
    /// verifier included), or to its exit.
    agent: Option<Duration>,
    outcome: Result<(), String>,
    guest: Guest,
    /// nginx's access log.
    nginx: Tally,
    /// The agent's metrics; `None` when it never served them.
    agent_counts: Option<Tally>,
    /// The capture path the agent chose (`socket` or `syscalls`), from its
    /// `burnwatch_capability{feature="socket_capture"}`.
    capture: Option<&'static str>,
}

/// The capture path the agent's metrics say it runs.
fn capture_path(metrics: &[String]) -> Option<&'static str> {
    metrics.iter().find_map(|l| {
        let rest = l.strip_prefix("burnwatch_capability{feature=\"socket_capture\"} ")?;
        Some(if rest.trim() == "1" {
            "socket"
        } else {
            "syscalls"
        })
    })
}

/// Whether kernel `release` (e.g. `6.12.118+deb12-cloud-amd64`) has the
/// socket path's tracepoints (6.4+): `capture.mode: auto` must take it.
fn has_socket_path(release: &str) -> bool {
    let v = version_key(release.split(['-', '+']).next().unwrap_or(release));
    v >= vec![6, 4]
}

fn test_kernel(
    k: &Kernel,
    initramfs: &Path,
    accel: &mut Accel,
    timeout: u64,
) -> Result<KernelResult> {
    let mut b = boot(k, initramfs, *accel, timeout)?;
    if *accel == Accel::Auto {
        if let End::KvmFailed(why) = &b.end {
            step(&format!("KVM does not boot here ({why}): TCG from now on"));
            *accel = Accel::Tcg;
            b = boot(k, initramfs, *accel, timeout)?;
        } else {
            *accel = Accel::Kvm;
        }
    }
    // A guest that dies before its init ran never met the agent: an
    // emulator fault (see `boot`). Boot it again, twice at most.
    let mut guest = parse_console(&b.console);
    for _ in 0..2 {
        let before_init = !b.marks.iter().any(|(_, m)| m.starts_with("init "));
        match &guest.panic {
            Some(panic) if before_init => {
                step(&format!(
                    "{} panicked before init ({panic}): not the agent; booting again",
                    k.release
                ));
                b = boot(k, initramfs, *accel, timeout)?;
                guest = parse_console(&b.console);
            }
            _ => break,
        }
    }
    let at = |name: &str| {
        b.marks
            .iter()
            .find(|(_, m)| m.starts_with(name))
            .map(|(t, _)| *t)
    };
    let boot_time = at("init ");
    let agent_start = at("agent start");
    let agent_end = at("agent ready")
        .or_else(|| at("agent exited"))
        .or_else(|| at("agent timeout"));
    let agent = agent_start.zip(agent_end).map(|(s, e)| e.saturating_sub(s));
    let verifier = at("verifier start")
        .zip(at("verifier done"))
        .map(|(s, e)| e.saturating_sub(s));
    let nginx = access_log_tally(guest.blocks.get("access-log").map_or(&[][..], |v| v));
    let agent_counts = guest.blocks.get("metrics").map(|m| agent_tally(m));
    let capture = guest.blocks.get("metrics").and_then(|m| capture_path(m));
    let mut outcome = verdict(
        &guest,
        &b.end,
        &intended_tally(),
        &nginx,
        agent_counts.as_ref().unwrap_or(&Tally::new()),
    );
    let want = if has_socket_path(&k.release) {
        "socket"
    } else {
        "syscalls"
    };
    if outcome.is_ok() && capture != Some(want) {
        outcome = Err(format!(
            "capture path {capture:?}, where this kernel should run the {want} path"
        ));
    }
    Ok(KernelResult {
        release: k.release.clone(),
        console: k.dir.join("console.log"),
        accel: *accel,
        wall: b.wall,
        boot: boot_time,
        verifier,
        agent,
        outcome,
        guest,
        nginx,
        agent_counts,
        capture,
    })
}

// ---------------------------------------------------------------------------
// Reading the console

/// What `/init` reported.
#[derive(Debug, Default)]
struct Guest {
    /// The guest's `uname -r`: init ran.
    release: Option<String>,
    nginx_failed: bool,
    agent_ready: bool,
    /// The agent's exit status when it quit before it was ready.
    agent_exited: Option<String>,
    agent_timeout: bool,
    done: bool,
    /// `begin NAME` .. `end NAME`, kernel messages left out.
    blocks: BTreeMap<String, Vec<String>>,
    /// The kernel's "Kernel panic - not syncing: ..." line.
    panic: Option<String>,
}

/// Escape sequences (the firmware clears the screen) would hide a marker
/// from a prefix match.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// The text after the marker, if the line has one.
fn marker(line: &str) -> Option<&str> {
    let at = line.find(MARK)?;
    Some(line[at + MARK.len()..].trim())
}

/// `[   12.345678] ...`: printk output, which can land between a block's
/// lines.
fn is_kernel_message(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('[') else {
        return false;
    };
    rest.split_once(']').is_some_and(|(stamp, _)| {
        let stamp = stamp.trim();
        !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
    })
}

/// `key=value` of a marker (values may be quoted).
fn marker_field<'a>(m: &'a str, key: &str) -> Option<&'a str> {
    let at = m.find(&format!("{key}="))? + key.len() + 1;
    let rest = &m[at..];
    match rest.strip_prefix('"') {
        Some(q) => q.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

fn parse_console(text: &str) -> Guest {
    let mut g = Guest::default();
    let mut open: Option<(String, Vec<String>)> = None;
    for raw in text.lines() {
        let line = strip_ansi(raw);
        if let Some(m) = marker(&line) {
            if let Some(name) = m.strip_prefix("begin ") {
                open = Some((name.trim().to_string(), Vec::new()));
            } else if let Some(name) = m.strip_prefix("end ") {
                if let Some((open_name, lines)) = open.take()
                    && open_name == name.trim()
                {
                    g.blocks.insert(open_name, lines);
                }
            } else if m.starts_with("init ") {
                g.release = marker_field(m, "kernel").map(str::to_owned);
            } else if m.starts_with("nginx failed") {
                g.nginx_failed = true;
            } else if m.starts_with("agent ready") {
                g.agent_ready = true;
            } else if m.starts_with("agent exited") {
                g.agent_exited = Some(marker_field(m, "status").unwrap_or("?").to_string());
            } else if m.starts_with("agent timeout") {
                g.agent_timeout = true;
            } else if m.starts_with("done") {
                g.done = true;
            }
            continue;
        }
        if line.contains("Kernel panic") && g.panic.is_none() {
            g.panic = Some(line.trim().to_string());
        }
        if let Some((_, lines)) = &mut open
            && !is_kernel_message(&line)
        {
            lines.push(line);
        }
    }
    g
}

/// One sample of the Prometheus text format: name, labels, value.
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => break,
                ',' | ' ' => {}
                '=' => {
                    // A quoted value with \\, \" and \n escapes.
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        let consumed = chars.next().map_or(body.len(), |(i, _)| i);
        rest = &body[consumed..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The agent's `burnwatch_http_requests_total` for nginx, per (tenant,
/// method, status).
fn agent_tally(metrics: &[String]) -> Tally {
    let mut t = Tally::new();
    for line in metrics {
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        if name != "burnwatch_http_requests_total"
            || labels.get("service").map(String::as_str) != Some(NGINX_SERVICE)
        {
            continue;
        }
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let status = label("status_code").parse().unwrap_or(0);
        *t.entry((label("tenant"), label("method"), status))
            .or_default() += value as u64;
    }
    t
}

/// nginx's access log (`$http_x_tenant_id $request_method $status`) per
/// (tenant, method, status); a missing header (`-`) is the agent's
/// missing-tenant label.
fn access_log_tally(lines: &[String]) -> Tally {
    let mut t = Tally::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [tenant, method, status] = f[..] else {
            continue;
        };
        let Ok(status) = status.parse::<u16>() else {
            continue;
        };
        let tenant = if tenant == "-" {
            MISSING_TENANT
        } else {
            tenant
        };
        *t.entry((tenant.to_string(), method.to_string(), status))
            .or_default() += 1;
    }
    t
}

/// Where the two tallies disagree, one line per (tenant, method, status).
fn compare(nginx: &Tally, agent: &Tally) -> Vec<String> {
    let mut keys: Vec<_> = nginx.keys().chain(agent.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (n, a) = (
                nginx.get(k).copied().unwrap_or(0),
                agent.get(k).copied().unwrap_or(0),
            );
            (n != a).then(|| format!("{} {} {}: nginx {n}, agent {a}", k.0, k.1, k.2))
        })
        .collect()
}

/// The line that says why the agent stopped: its own `error: ...`, else the
/// last ERROR event, else its last line. Verifier logs can run to thousands
/// of lines; the verifier's summary line is added when there is one.
fn agent_error(log: &[String]) -> String {
    let line = log
        .iter()
        .rev()
        .find(|l| l.starts_with("error:"))
        .or_else(|| log.iter().rev().find(|l| l.contains("ERROR")))
        .or_else(|| log.iter().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "(no output)".into());
    let mut reason = match line.split_once("Verifier output:") {
        Some((head, _)) => head.trim().to_string(),
        None => line,
    };
    // The verifier ends with its complaint, then "verification time ...",
    // then its statistics.
    if let Some(i) = log.iter().position(|l| l.starts_with("verification time")) {
        let complaint = i.checked_sub(1).map(|j| log[j].trim());
        let processed = log[i..]
            .iter()
            .find(|l| l.starts_with("processed "))
            .map(|l| l.split(" max_states").next().unwrap_or(l).trim());
        let parts: Vec<&str> = complaint.into_iter().chain(processed).collect();
        reason.push_str(&format!(" [verifier: {}]", parts.join("; ")));
    }
    reason
}

fn verdict(
    g: &Guest,
    end: &End,
    intended: &Tally,
    nginx: &Tally,
    agent: &Tally,
) -> Result<(), String> {
    let agent_log = g.blocks.get("agent-log").map_or(&[][..], |v| v);
    if g.release.is_none() {
        return Err(match (&g.panic, end) {
            (Some(p), _) => p.clone(),
            (None, End::TimedOut) => "init never ran (timeout)".into(),
            (None, _) => "init never ran".into(),
        });
    }
    if g.nginx_failed {
        let why = g
            .blocks
            .get("nginx-error")
            .and_then(|l| l.iter().rev().find(|l| l.contains("[emerg]")).cloned())
            .unwrap_or_default();
        return Err(format!("harness: nginx did not start {why}"));
    }
    if let Some(status) = &g.agent_exited {
        return Err(format!(
            "agent exited (status {status}): {}",
            agent_error(agent_log)
        ));
    }
    if g.agent_timeout {
        return Err(format!(
            "agent not ready in time; last log: {}",
            agent_log.last().map_or("(none)", |s| s.as_str())
        ));
    }
    if !g.agent_ready || !g.done || *end == End::TimedOut {
        return Err(format!("the VM stopped early ({end:?}): see console.log"));
    }
    if nginx != intended {
        return Err(format!(
            "harness: nginx's log is not the traffic sent: {}",
            compare(intended, nginx).join("; ")
        ));
    }
    let diff = compare(nginx, agent);
    if !diff.is_empty() {
        return Err(format!("counts differ: {}", diff.join("; ")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reporting

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}

/// Long lines (a verifier dump) cut for the terminal; console.log has them.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn print_details(r: &KernelResult) {
    let log = r.guest.blocks.get("agent-log").map_or(&[][..], |v| v);
    eprintln!("    --- agent log ({} lines) ---", log.len());
    let (head, tail) = (15, 25);
    for (i, l) in log.iter().enumerate() {
        if i == head && log.len() > head + tail {
            eprintln!(
                "    ... {} lines (console.log has them)",
                log.len() - head - tail
            );
        }
        if i < head || i + tail >= log.len() {
            eprintln!("    {}", cut(l, 240));
        }
    }
    if let Some(v) = r.guest.blocks.get("verifier") {
        eprintln!("    --- burnwatch verifier: every program on this kernel ---");
        for l in v {
            eprintln!("    {}", cut(l, 240));
        }
    }
    if let Some(m) = r.guest.blocks.get("metrics") {
        eprintln!("    --- /metrics ---");
        for l in m
            .iter()
            .filter(|l| l.contains(NGINX_SERVICE) || l.contains("dropped"))
        {
            eprintln!("    {l}");
        }
    }
    if r.guest.blocks.contains_key("access-log") {
        eprintln!(
            "    --- {NGINX_SERVICE}: requests curl sent, nginx logged, the agent counted ---"
        );
        eprintln!(
            "    {:<10} {:<6} {:>6} {:>6} {:>6} {:>6}",
            "tenant", "method", "status", "sent", "nginx", "agent"
        );
        let sent = intended_tally();
        let none = Tally::new();
        let agent = r.agent_counts.as_ref().unwrap_or(&none);
        let mut keys: Vec<_> = sent
            .keys()
            .chain(r.nginx.keys())
            .chain(agent.keys())
            .collect();
        keys.sort();
        keys.dedup();
        let get = |t: &Tally, k| t.get(k).copied().unwrap_or(0);
        for k in keys {
            let (s, n) = (get(&sent, k), get(&r.nginx, k));
            let a = match &r.agent_counts {
                Some(t) => get(t, k).to_string(),
                None => "-".into(),
            };
            let flag = if s == n && a == n.to_string() {
                ""
            } else {
                "  <-"
            };
            eprintln!(
                "    {:<10} {:<6} {:>6} {s:>6} {n:>6} {a:>6}{flag}",
                k.0, k.1, k.2
            );
        }
    }
    eprintln!("    console: {}", r.console.display());
    eprintln!(
        "    {}: {}",
        r.release,
        match &r.outcome {
            Ok(()) => "PASS".to_string(),
            Err(e) => format!("FAIL: {e}"),
        }
    );
}

/// One line per kernel; a failure's reason on the line below, whole.
/// `nginx`: requests nginx logged / requests curl sent (the harness works
/// when they are equal, whatever the agent did).
fn result_table(results: &[KernelResult]) -> String {
    let sent: u64 = intended_tally().values().sum();
    let w = results
        .iter()
        .map(|r| r.release.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let mut s = format!(
        "{:<w$} {:<5} {:>7} {:>9} {:>11} {:>8} {:>7} {:<8}  result\n",
        "kernel", "accel", "boot", "verifier", "agent load", "total", "nginx", "capture"
    );
    for r in results {
        let logged = if r.guest.blocks.contains_key("access-log") {
            format!("{}/{sent}", r.nginx.values().sum::<u64>())
        } else {
            "-".into()
        };
        s.push_str(&format!(
            "{:<w$} {:<5} {:>7} {:>9} {:>11} {:>8} {logged:>7} {:<8}  {}\n",
            r.release,
            format!("{:?}", r.accel).to_lowercase(),
            secs(r.boot),
            secs(r.verifier),
            secs(r.agent),
            secs(Some(r.wall)),
            r.capture.unwrap_or("-"),
            if r.outcome.is_ok() { "PASS" } else { "FAIL" },
        ));
        if let Err(e) = &r.outcome {
            s.push_str(&format!("    {e}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    fn key(t: &str, m: &str, s: u16) -> (String, String, u16) {
        (t.into(), m.into(), s)
    }

    #[test]
    fn knows_which_kernels_have_the_socket_path() {
        assert!(has_socket_path("6.12.118+deb12-cloud-amd64"));
        assert!(has_socket_path("6.18.44-fc-v1300"));
        assert!(has_socket_path("6.4.0"));
        assert!(!has_socket_path("6.1.0-57-cloud-amd64"));
        assert!(!has_socket_path("5.15.0"));
        let m = |v: &str| {
            vec![format!(
                "burnwatch_capability{{feature=\"socket_capture\"}} {v}"
            )]
        };
        assert_eq!(capture_path(&m("1")), Some("socket"));
        assert_eq!(capture_path(&m("0")), Some("syscalls"));
        assert_eq!(capture_path(&[]), None);
    }

    #[test]
    fn picks_the_newest_kernel_of_each_series() {
        let search = "\
linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-57-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-57-cloud-amd64-dbg - Debug symbols for linux-image-6.1.0-57-cloud-amd64
linux-image-6.1.0-58-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.12.95+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.118+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.90+deb12.1-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-cloud-amd64 - Linux for x86-64 cloud (meta-package)";
        let names: Vec<String> = search
            .lines()
            .filter_map(|l| l.split(" - ").next())
            .map(str::to_owned)
            .collect();
        assert_eq!(
            pick_kernels(&names, &[]),
            [
                "linux-image-6.1.0-57-cloud-amd64",
                "linux-image-6.12.118+deb12-cloud-amd64"
            ]
        );
        assert_eq!(
            pick_kernels(&names, &["6.1".into()]),
            ["linux-image-6.1.0-57-cloud-amd64"]
        );
        assert_eq!(
            pick_kernels(&names, &["6.12".into()]),
            ["linux-image-6.12.118+deb12-cloud-amd64"]
        );
        assert!(pick_kernels(&names, &["5.10".into()]).is_empty());
        assert!(version_key("6.12.90+deb12.1") > version_key("6.12.90+deb12"));
        assert!(version_key("6.1.0-57") > version_key("6.1.0-9"));
        assert_eq!(cloud_kernel_version("linux-image-cloud-amd64"), None);
    }

    #[test]
    fn checks_the_kernel_config() {
        let mut config: String = REQUIRED_CONFIG
            .iter()
            .map(|o| format!("CONFIG_{o}=y\n"))
            .collect();
        assert!(missing_config(&config).is_empty());
        config = config.replace("CONFIG_BPF_EVENTS=y", "CONFIG_BPF_EVENTS=m");
        config = config.replace("CONFIG_RD_GZIP=y\n", "# CONFIG_RD_GZIP is not set\n");
        assert_eq!(missing_config(&config), ["RD_GZIP", "BPF_EVENTS"]);
    }

    #[test]
    fn reads_ldd_output() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f6c)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6c)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f6c)\n";
        assert_eq!(
            parse_ldd(ldd).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn writes_newc_with_parents_first() {
        let mut a = Archive::default();
        a.text("etc/nginx/nginx.conf", "x", 0o644);
        a.add("bin/sh", Node::Symlink("busybox".into()));
        let mut out = Vec::new();
        a.write(&mut out).unwrap();
        // Walk the members back.
        let mut names = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let h = std::str::from_utf8(&out[at..at + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field = |i: usize| usize::from_str_radix(&h[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (size, namesize) = (field(6), field(11));
            let name = std::str::from_utf8(&out[at + 110..at + 110 + namesize - 1]).unwrap();
            names.push(name.to_string());
            at = (at + 110 + namesize).next_multiple_of(4);
            if name == "bin/sh" {
                assert_eq!(&out[at..at + size], b"busybox");
                assert_eq!(field(1), 0o120777);
            }
            at = (at + size).next_multiple_of(4);
        }
        assert_eq!(at, out.len());
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "etc",
                "etc/nginx",
                "etc/nginx/nginx.conf",
                "TRAILER!!!"
            ]
        );
    }

    #[test]
    fn stamp_follows_the_inputs() {
        let bin = std::env::temp_dir().join(format!("kernels-stamp-{}", std::process::id()));
        std::fs::write(&bin, b"agent v1").unwrap();
        let archive = |init: &str| {
            let mut a = Archive::default();
            a.add("usr/bin/burnwatch", Node::File(bin.clone(), 0o755));
            a.text("init", init, 0o755);
            a.stamp()
        };
        let first = archive("#!/bin/sh\n");
        assert_eq!(archive("#!/bin/sh\n"), first);
        assert_ne!(archive("#!/bin/sh -x\n"), first);
        // A rebuilt agent (another size and mtime) means a new image.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&bin, b"agent v2!").unwrap();
        assert_ne!(archive("#!/bin/sh\n"), first);
        std::fs::remove_file(&bin).unwrap();
    }

    #[test]
    fn traffic_matches_its_tally() {
        let script = traffic_script();
        assert!(script.contains(
            "curl -s -H 'X-Tenant-ID: a' http://127.0.0.1:8080/nf http://127.0.0.1:8080/nf"
        ));
        assert!(script.contains("for i in $(seq 3); do curl -s -H 'X-Tenant-ID: b' "));
        let t = intended_tally();
        assert_eq!(t[&key("a", "GET", 200)], 20);
        assert_eq!(t[&key("b", "GET", 503)], 7);
        assert_eq!(t[&key("c", "POST", 200)], 3);
        assert_eq!(t[&key(MISSING_TENANT, "GET", 200)], 2);
        // /init's own wait loop names the same service.
        assert!(INIT.contains(&format!("service=\"{NGINX_SERVICE}\"")));
        assert!(NGINX_CONF.contains(&format!(
            "listen 127.0.0.1:{}",
            NGINX_SERVICE.rsplit(':').next().unwrap()
        )));
    }

    const CONSOLE: &str = "\
\x1bc\x1b[?7l\x1b[2JSeaBIOS (version 1.16.2-debian-1.16.2-1)
==BURNWATCH== init kernel=6.1.0-57-cloud-amd64 cpus=2 uptime=2.01
==BURNWATCH== nginx started uptime=2.10
==BURNWATCH== agent start uptime=2.11
==BURNWATCH== agent ready uptime=80.50
==BURNWATCH== traffic sent nginx=4 uptime=81.00
==BURNWATCH== begin metrics
burnwatch_http_requests_total{service=\"nginx:8080\",tenant=\"a\",method=\"GET\",status_code=\"200\"} 2
[   83.123456] random: crng init done
burnwatch_http_requests_total{service=\"nginx:8080\",tenant=\"unknown\",method=\"GET\",status_code=\"200\"} 1
burnwatch_http_requests_total{service=\"burnwatch:9464\",tenant=\"unknown\",method=\"GET\",status_code=\"200\"} 9
burnwatch_http_requests_total{service=\"nginx:8080\",tenant=\"b\",method=\"GET\",status_code=\"503\"} 1
==BURNWATCH== end metrics
==BURNWATCH== begin access-log
a GET 200
a GET 200
- GET 200
b GET 503
==BURNWATCH== end access-log
==BURNWATCH== agent stopped status=0
==BURNWATCH== begin agent-log
2026-11-20T10:00:00Z  INFO burnwatch::run: ready
==BURNWATCH== end agent-log
==BURNWATCH== done uptime=90.0
[   90.1] reboot: Power down
";

    #[test]
    fn parses_the_console() {
        let g = parse_console(CONSOLE);
        assert_eq!(g.release.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert!(g.agent_ready && g.done && !g.nginx_failed);
        assert_eq!(g.agent_exited, None);
        assert_eq!(
            g.blocks["metrics"].len(),
            4,
            "the kernel's line is left out"
        );
        assert_eq!(g.blocks["access-log"].len(), 4);
        assert_eq!(g.blocks["agent-log"].len(), 1);

        let nginx = access_log_tally(&g.blocks["access-log"]);
        let agent = agent_tally(&g.blocks["metrics"]);
        assert_eq!(nginx, agent);
        assert_eq!(agent[&key("unknown", "GET", 200)], 1);
        assert_eq!(agent.len(), 3, "only nginx's service");
        let intended = nginx.clone();
        assert_eq!(verdict(&g, &End::Exited, &intended, &nginx, &agent), Ok(()));
    }

    #[test]
    fn parses_samples() {
        let (name, labels, value) =
            parse_sample(r#"m_total{a="x\"y",b="p,q} r",c="\\"} 12"#).unwrap();
        assert_eq!(name, "m_total");
        assert_eq!(labels["a"], "x\"y");
        assert_eq!(labels["b"], "p,q} r");
        assert_eq!(labels["c"], "\\");
        assert_eq!(value, 12.0);
        assert_eq!(parse_sample("up 1").unwrap().2, 1.0);
        assert!(parse_sample("# TYPE up gauge").is_none());
        assert!(parse_sample("garbage{").is_none());
    }

    #[test]
    fn strips_escapes_and_spots_kernel_lines() {
        assert_eq!(strip_ansi("\x1b[1mbold\x1b[0m x"), "bold x");
        assert_eq!(strip_ansi("\x1bc\x1b[?7lSeaBIOS"), "SeaBIOS");
        assert!(is_kernel_message("[   83.123456] random: crng init done"));
        assert!(!is_kernel_message("[ok] fine"));
        assert_eq!(
            marker_field(r#"waiting after=30s last_log="a b" x=1"#, "last_log"),
            Some("a b")
        );
    }

    #[test]
    fn tabulates_results() {
        let nginx = intended_tally();
        let mut guest = Guest::default();
        guest.blocks.insert("access-log".into(), Vec::new());
        let result = |release: &str, outcome| KernelResult {
            release: release.into(),
            console: PathBuf::new(),
            accel: Accel::Tcg,
            wall: Duration::from_millis(18_400),
            boot: Some(Duration::from_millis(5_100)),
            verifier: None,
            agent: Some(Duration::from_millis(1_800)),
            outcome,
            guest: Guest {
                blocks: guest.blocks.clone(),
                ..Guest::default()
            },
            nginx: nginx.clone(),
            agent_counts: None,
            capture: Some("syscalls"),
        };
        let table = result_table(&[
            result(
                "6.1.0-57-cloud-amd64",
                Err("agent exited (status 1): why".into()),
            ),
            result("6.12.118+deb12-cloud-amd64", Ok(())),
        ]);
        assert_eq!(
            table,
            "\
kernel                     accel    boot  verifier  agent load    total   nginx capture   result
6.1.0-57-cloud-amd64       tcg      5.1s         -        1.8s    18.4s   37/37 syscalls  FAIL
    agent exited (status 1): why
6.12.118+deb12-cloud-amd64 tcg      5.1s         -        1.8s    18.4s   37/37 syscalls  PASS
"
        );
    }

    #[test]
    fn compares_and_explains() {
        let nginx = access_log_tally(&lines("a GET 200\na GET 200\nb GET 503\n"));
        let mut agent = nginx.clone();
        agent.insert(key("a", "GET", 200), 1);
        agent.insert(key("a", "GET", 0), 1);
        assert_eq!(
            compare(&nginx, &agent),
            ["a GET 0: nginx 0, agent 1", "a GET 200: nginx 2, agent 1"]
        );

        // The agent quit before it was ready: its own error line, and the
        // verifier's verdict out of a long log.
        let console = "\
==BURNWATCH== init kernel=6.18.0 uptime=1.0
==BURNWATCH== agent start uptime=1.1
==BURNWATCH== agent exited status=1 uptime=60.0
==BURNWATCH== begin agent-log
2026-11-20T10:00:00Z  INFO burnwatch::probe: loading
error: loading frame_responses: the BPF_PROG_LOAD syscall failed. Verifier output: 0: (bf) r6 = r1
1: (b7) r0 = 0
BPF program is too large. Processed 1000001 insn
verification time 60323839 usec
stack depth 56+104+0
processed 1000001 insns (limit 1000000) max_states_per_insn 134 total_states 59174
: Argument list too long (os error 7)
==BURNWATCH== end agent-log
==BURNWATCH== done uptime=61.0
";
        let g = parse_console(console);
        let e = verdict(&g, &End::Exited, &nginx, &nginx, &nginx).unwrap_err();
        assert_eq!(
            e,
            "agent exited (status 1): error: loading frame_responses: the BPF_PROG_LOAD \
             syscall failed. [verifier: BPF program is too large. Processed 1000001 insn; \
             processed 1000001 insns (limit 1000000)]"
        );

        let none =
            parse_console("[    0.5] Kernel panic - not syncing: VFS: Unable to mount root\n");
        assert_eq!(
            verdict(&none, &End::Exited, &nginx, &nginx, &nginx).unwrap_err(),
            "[    0.5] Kernel panic - not syncing: VFS: Unable to mount root"
        );
        assert_eq!(
            verdict(&Guest::default(), &End::TimedOut, &nginx, &nginx, &nginx).unwrap_err(),
            "init never ran (timeout)"
        );
    }
}
