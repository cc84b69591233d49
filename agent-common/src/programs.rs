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

/// Every capability, [`CORE`] first. Each program of [`TRACEPOINTS`] and
/// [`TAIL_CALLED`] belongs to exactly one.
pub const CAPABILITIES: &[Capability] = &[
    CORE,
    Capability {
        feature: "pipelined_responses",
        programs: &["frame_responses"],
        without: "several responses in one buffer (pipelining, 100 Continue with its answer) count only the first; a watched client's responses count only when each starts a read",
    },
    Capability {
        feature: "client_requests",
        programs: &["parse_client_write"],
        without: "requests of watched clients (`clients:`) are not counted",
    },
    Capability {
        feature: "sendfile_bodies",
        programs: &["sys_enter_sendfile64"],
        without: "a pipelined response after a body sent with sendfile may be missed",
    },
    Capability {
        feature: "open_at_close",
        programs: &["sys_enter_close", "inet_sock_set_state"],
        without: "requests still unanswered when their connection ends are not counted as 000",
    },
    Capability {
        feature: "descriptor_reuse",
        programs: &["sys_exit_accept4", "sys_enter_connect"],
        without: "a descriptor reused for a new connection may carry the old one's state until its next request",
    },
    Capability {
        feature: "tcp_resets",
        programs: &["tcp_send_reset"],
        without: "resets and refused connections are not counted as TCP failures",
    },
];

/// The capability a program serves.
pub fn capability_of(program: &str) -> Option<&'static Capability> {
    CAPABILITIES.iter().find(|c| c.programs.contains(&program))
}

impl Capability {
    /// Whether this is [`CORE`], the one the agent cannot run without.
    pub fn is_core(&self) -> bool {
        self.feature == CORE.feature
    }
}

/// Whether `program` serves [`CORE`].
pub fn is_core(program: &str) -> bool {
    CORE.programs.contains(&program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_serves_exactly_one_capability() {
        let programs = TRACEPOINTS
            .iter()
            .map(|t| t.2)
            .chain(TAIL_CALLED.iter().map(|t| t.1));
        for p in programs {
            let n = CAPABILITIES
                .iter()
                .filter(|c| c.programs.contains(&p))
                .count();
            assert_eq!(n, 1, "{p} serves {n} capabilities");
        }
        for c in CAPABILITIES {
            for p in c.programs {
                assert!(
                    TRACEPOINTS.iter().any(|t| t.2 == *p) || TAIL_CALLED.iter().any(|t| t.1 == *p),
                    "{} names unknown program {p}",
                    c.feature
                );
            }
        }
        assert_eq!(CAPABILITIES[0].feature, CORE.feature);
    }
}
