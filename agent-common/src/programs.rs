//! The eBPF object's programs and the tracepoints each is attached to.
//!
//! The names are the program functions of `burnwatch-ebpf`. The agent
//! attaches them in this order; the bench's floor phase attaches a program
//! that does nothing to the same tracepoints, to measure what tracing these
//! syscalls costs before any of the agent's work.

/// (category, tracepoint, program): the program attached to each tracepoint.
/// Syscalls whose arguments line up share one program, verified once.
/// Attached in this order: lifecycle first, so no connection state is
/// created before the probes that clean it up are in place.
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("syscalls", "sys_enter_close", "sys_enter_close"),
    ("syscalls", "sys_exit_accept4", "sys_exit_accept4"),
    ("syscalls", "sys_exit_accept", "sys_exit_accept4"),
    ("syscalls", "sys_enter_connect", "sys_enter_connect"),
    ("tcp", "tcp_send_reset", "tcp_send_reset"),
    ("sock", "inet_sock_set_state", "inet_sock_set_state"),
    ("syscalls", "sys_enter_write", "sys_enter_write"),
    ("syscalls", "sys_enter_sendto", "sys_enter_write"),
    ("syscalls", "sys_enter_writev", "sys_enter_writev"),
    ("syscalls", "sys_enter_sendmsg", "sys_enter_sendmsg"),
    ("syscalls", "sys_enter_sendfile64", "sys_enter_sendfile64"),
    ("syscalls", "sys_exit_read", "sys_exit_read"),
    ("syscalls", "sys_exit_recvfrom", "sys_exit_read"),
    ("syscalls", "sys_exit_readv", "sys_exit_read"),
    ("syscalls", "sys_exit_recvmsg", "sys_exit_read"),
];
