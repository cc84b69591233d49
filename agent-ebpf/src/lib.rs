//! The eBPF programs live in `main.rs` (the `burnwatch` binary for
//! `bpfel-unknown-none`). This library target exists so the agent can name
//! this crate as a build dependency, which makes cargo rebuild the agent
//! when the programs change.
#![no_std]
