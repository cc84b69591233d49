# syntax=docker/dockerfile:1
# burnwatch node agent image: `docker build -t burnwatch .` from the
# repository root. Two stages: a Rust builder with what `cargo xtask setup`
# installs for the build (nightly rust-src for the eBPF crate, bpf-linker
# built against the nightly's own LLVM), and a distroless runtime holding
# only the agent binary, which embeds its eBPF object (no shell, no package
# manager).

# The runtime image. distroless publishes rolling tags only: pin a digest
# when you build (--build-arg RUNTIME=gcr.io/distroless/cc-debian12@sha256:...).
ARG RUNTIME=gcr.io/distroless/cc-debian12:latest

FROM rust:1.95-bookworm AS builder
ARG BPF_LINKER_VERSION=0.13.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The eBPF programs build with nightly + `-Z build-std=core`.
RUN rustup toolchain install nightly --profile minimal --component rust-src
# bpf-linker must link the same LLVM major version as the nightly rustc; the
# nightly ships it as libLLVM, found by bpf-linker's build via LLVM_PREFIX/lib.
RUN sysroot="$(rustc +nightly --print sysroot)" \
 && llvm_major="$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')" \
 && libllvm="$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM*.so*' -printf '%f\n' | head -n1)" \
 && mkdir -p /opt/llvm/lib \
 && ln -s "$sysroot/lib/$libllvm" /opt/llvm/lib/libLLVM.so \
 && ln -s "$sysroot/lib/$libllvm" "/opt/llvm/lib/$libllvm" \
 && LLVM_PREFIX=/opt/llvm cargo install bpf-linker --locked \
      --version "$BPF_LINKER_VERSION" --no-default-features --features "llvm-$llvm_major"
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package burnwatch \
 && install -m 0755 target/release/burnwatch /burnwatch

# glibc 2.36 like the bookworm builder; runs as root (uid 0): the chart adds
# CAP_BPF and CAP_PERFMON, which Kubernetes grants to root's effective set.
FROM ${RUNTIME}
COPY --from=builder /burnwatch /usr/local/bin/burnwatch
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/burnwatch"]
CMD ["run"]
