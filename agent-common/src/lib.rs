//! Shared between the kernel (`burnwatch-ebpf`) and userspace (`burnwatch`).
//!
//! Everything here is `no_std`, allocation-free and verifier-friendly: fixed
//! size arrays, masked indexes, no recursion, no panics on any input. The
//! kernel runs exactly this code, so the host unit tests and fuzzers test
//! what runs in production.
//!
//! - [`maps`]: the `#[repr(C)]` layouts of every map key and value.
//! - [`http`]: the streaming HTTP/1.x request parser and the status-line
//!   parser, fed byte by byte from syscall buffers.
//! - [`programs`]: the eBPF programs and the tracepoints each attaches to.
//! - [`offsets`]: kernel struct offsets (resolved from BTF in userspace) the
//!   kernel side uses to find the socket behind a file descriptor.
#![cfg_attr(not(test), no_std)]

pub mod http;
pub mod maps;
pub mod offsets;
pub mod programs;
