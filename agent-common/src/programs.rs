//! The eBPF object's programs and the tracepoints each is attached to.
//!
//! The names are the program functions of `burnwatch-ebpf`. The agent
//! attaches them in this order; the bench's floor phase attaches a program
//! that does nothing to the same tracepoints, to measure what tracing these
//! syscalls costs before any of the agent's work.

/// How the agent captures socket I/O, chosen at start (`capture.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// BTF tracepoints on the socket layer (`sock:sock_recv_length`,
    /// `sock:sock_send_length`), connection state in socket storage:
    /// kernels 6.4+ on x86_64. Only socket I/O runs a program.
    Socket,
    /// Syscall tracepoints, connection state in a map keyed by (process,
    /// descriptor): any kernel the agent supports. Every syscall of the
    /// node takes the traced path.
    Syscalls,
}

/// The category that names a BTF tracepoint (`tp_btf`) in a hook table.
pub const BTF: &str = "btf";

impl CaptureMode {
    pub fn name(self) -> &'static str {
        match self {
            CaptureMode::Socket => "socket",
            CaptureMode::Syscalls => "syscalls",
        }
    }

    /// (category, tracepoint, program) attached, in this order. Category
    /// [`BTF`]: a BTF tracepoint of that name.
    pub fn hooks(self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self {
            CaptureMode::Socket => SOCKET_HOOKS,
            CaptureMode::Syscalls => TRACEPOINTS,
        }
    }

    /// The programs reached only by tail call: (slot, program).
    pub fn tail_called(self) -> &'static [(u32, &'static str)] {
        match self {
            CaptureMode::Socket => SOCKET_TAIL_CALLED,
            CaptureMode::Syscalls => TAIL_CALLED,
        }
    }

    /// The program array the tail calls go through.
    pub fn tail_map(self) -> &'static str {
        match self {
            CaptureMode::Socket => "SOCK_TAILS",
            CaptureMode::Syscalls => "TAIL_CALLS",
        }
    }

    /// What the mode counts, by program: [`CORE`]'s role first.
    pub fn capabilities(self) -> &'static [Capability] {
        match self {
            CaptureMode::Socket => SOCKET_CAPABILITIES,
            CaptureMode::Syscalls => CAPABILITIES,
        }
    }

    /// Every program of the mode, each once: attached ones in hook order,
    /// then the tail-called ones.
    pub fn programs(self) -> impl Iterator<Item = &'static str> {
        let hooks = self.hooks();
        hooks
            .iter()
            .enumerate()
            .filter(move |(i, h)| !hooks[..*i].iter().any(|e| e.2 == h.2))
            .map(|(_, h)| h.2)
            .chain(self.tail_called().iter().map(|t| t.1))
    }
}

/// The BTF tracepoint the socket path's tail-called programs are verified
/// for (both socket tracepoints share its prototype).
pub const SOCKET_TAIL_TARGET: &str = "sock_send_length";

/// The socket path's hooks: the socket state first (no connection state
/// is created before the probe that ends it is in place).
pub const SOCKET_HOOKS: &[(&str, &str, &str)] = &[
    (BTF, "tcp_destroy_sock", "sock_destroy"),
    (BTF, "inet_sock_set_state", "sock_state"),
    ("tcp", "tcp_send_reset", "tcp_send_reset"),
    (BTF, "sock_send_length", "sock_send"),
    (BTF, "sock_recv_length", "sock_recv"),
];

/// The socket path's tail-called programs (slots as [`TAIL_CALLED`]'s).
pub const SOCKET_TAIL_CALLED: &[(u32, &str)] =
    &[(0, "sock_parse_client_write"), (1, "sock_frame_responses")];

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

/// The programs reached only by tail call: (slot in `TAIL_CALLS`, program).
pub const TAIL_CALLED: &[(u32, &str)] = &[(0, "parse_client_write"), (1, "frame_responses")];

/// What the agent counts, by the programs it needs. A capability is up when
/// every one of its programs verified and attached. Only [`CORE`] is
/// required: without it nothing is counted, and the agent exits with the
/// reason. Any other capability that fails (a kernel whose verifier refuses
/// a program, a tracepoint this kernel lacks) is logged and reported as down
/// (`burnwatch_capability{feature}`), and the agent counts with the rest.
pub struct Capability {
    /// `burnwatch_capability{feature="..."}`.
    pub feature: &'static str,
    pub programs: &'static [&'static str],
    /// What is not counted while it is down (said in the log line).
    pub without: &'static str,
}

/// Requests and their status lines: the product.
pub const CORE: Capability = Capability {
    feature: "core",
    programs: &[
        "sys_exit_read",
        "sys_enter_write",
        "sys_enter_writev",
        "sys_enter_sendmsg",
    ],
    without: "no request is counted",
};

const PIPELINED: &str = "several responses in one buffer (pipelining, 100 Continue with its answer) count only the first; a watched client's responses count only when each starts a read";
const CLIENTS: &str = "requests of watched clients (`clients:`) are not counted";
const OPEN_AT_CLOSE: &str =
    "requests still unanswered when their connection ends are not counted as 000";
const RESETS: &str = "resets and refused connections are not counted as TCP failures";

/// Every capability of the syscall path, [`CORE`] first. Each program of
/// [`TRACEPOINTS`] and [`TAIL_CALLED`] belongs to exactly one.
pub const CAPABILITIES: &[Capability] = &[
    CORE,
    Capability {
        feature: "pipelined_responses",
        programs: &["frame_responses"],
        without: PIPELINED,
    },
    Capability {
        feature: "client_requests",
        programs: &["parse_client_write"],
        without: CLIENTS,
    },
    Capability {
        feature: "sendfile_bodies",
        programs: &["sys_enter_sendfile64"],
        without: "a pipelined response after a body sent with sendfile may be missed",
    },
    Capability {
        feature: "open_at_close",
        programs: &["sys_enter_close", "inet_sock_set_state"],
        without: OPEN_AT_CLOSE,
    },
    Capability {
        feature: "descriptor_reuse",
        programs: &["sys_exit_accept4", "sys_enter_connect"],
        without: "a descriptor reused for a new connection may carry the old one's state until its next request",
    },
    Capability {
        feature: "tcp_resets",
        programs: &["tcp_send_reset"],
        without: RESETS,
    },
];

/// The socket path's capabilities, its core first. Sendfile bodies and
/// descriptor reuse need no program of their own there (the send program
/// sees sendfile; state is per socket, not per descriptor).
pub const SOCKET_CAPABILITIES: &[Capability] = &[
    Capability {
        feature: "core",
        programs: &["sock_recv", "sock_send"],
        without: "no request is counted",
    },
    Capability {
        feature: "pipelined_responses",
        programs: &["sock_frame_responses"],
        without: PIPELINED,
    },
    Capability {
        feature: "client_requests",
        programs: &["sock_parse_client_write"],
        without: CLIENTS,
    },
    Capability {
        feature: "sendfile_bodies",
        programs: &[],
        without: "",
    },
    Capability {
        feature: "open_at_close",
        programs: &["sock_state", "sock_destroy"],
        without: OPEN_AT_CLOSE,
    },
    Capability {
        feature: "descriptor_reuse",
        programs: &[],
        without: "",
    },
    Capability {
        feature: "tcp_resets",
        programs: &["tcp_send_reset"],
        without: RESETS,
    },
];

/// The capability a program serves (`tcp_send_reset` serves the same in
/// both modes).
pub fn capability_of(program: &str) -> Option<&'static Capability> {
    CAPABILITIES
        .iter()
        .chain(SOCKET_CAPABILITIES)
        .find(|c| c.programs.contains(&program))
}

impl Capability {
    /// Whether this is the core capability, the one the agent cannot run
    /// without.
    pub fn is_core(&self) -> bool {
        self.feature == CORE.feature
    }
}

/// Whether `program` serves the core capability of either mode.
pub fn is_core(program: &str) -> bool {
    capability_of(program).is_some_and(Capability::is_core)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_serves_exactly_one_capability() {
        for mode in [CaptureMode::Socket, CaptureMode::Syscalls] {
            let caps = mode.capabilities();
            for p in mode.programs() {
                let n = caps.iter().filter(|c| c.programs.contains(&p)).count();
                assert_eq!(n, 1, "{mode:?}: {p} serves {n} capabilities");
            }
            for c in caps {
                for p in c.programs {
                    assert!(
                        mode.programs().any(|q| q == *p),
                        "{mode:?}: {} names unknown program {p}",
                        c.feature
                    );
                }
            }
            assert!(caps[0].is_core());
            // Both modes report the same features, in the same order.
            let names: Vec<_> = caps.iter().map(|c| c.feature).collect();
            let other: Vec<_> = CAPABILITIES.iter().map(|c| c.feature).collect();
            assert_eq!(names, other);
        }
        assert!(is_core("sock_recv") && is_core("sys_exit_read") && !is_core("tcp_send_reset"));
    }
}
