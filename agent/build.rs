//! Builds the eBPF programs (`agent-ebpf`, for bpfel-unknown-none with the
//! nightly toolchain and bpf-linker) and leaves the object in OUT_DIR, where
//! `probe/mod.rs` embeds it: the agent ships as one binary.
//! `AYA_BUILD_SKIP=1` skips this (for `cargo check` without bpf-linker).
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "burnwatch-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
