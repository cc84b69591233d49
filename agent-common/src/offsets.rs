//! Kernel struct member offsets, in bytes.
//!
//! Rust eBPF cannot emit CO-RE relocations, so the agent reads these from
//! `/sys/kernel/btf/vmlinux` at start and hands them to the programs through
//! the config map. With them the kernel walks
//! `task->files->fdt->fd[fd]->{f_inode->i_mode, private_data->sk}` to learn
//! whether a file descriptor is a TCP socket and what its ports are.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.private_data`
    pub file_private_data: u32,
    /// `inode.i_mode`
    pub inode_mode: u32,
    /// `socket.type`
    pub socket_type: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock_common.skc_family`
    pub skc_family: u32,
    /// `sock_common.skc_num` (local port, host order)
    pub skc_num: u32,
    /// `sock_common.skc_dport` (remote port, network order)
    pub skc_dport: u32,
    /// `sock_common.skc_daddr`
    pub skc_daddr: u32,
    /// `sock_common.skc_v6_daddr`
    pub skc_v6_daddr: u32,
    /// Offsets in `struct pt_regs` of a syscall's first four arguments as
    /// the user passed them (x86_64: `di`, `si`, `dx`, `r10`). Read at a
    /// syscall's exit from the thread's saved registers, so no enter probe
    /// has to stash them (and a thread already blocked in `read` when the
    /// agent started is seen when it returns). The fourth is `recvfrom`'s
    /// flags.
    pub regs_arg: [u32; 4],
    /// Syscall numbers of this architecture: the exit programs shared by
    /// several syscalls tell them apart by number.
    pub nr_readv: u32,
    pub nr_recvmsg: u32,
    pub nr_recvfrom: u32,
    /// `sock.sk_type` (u16): the socket path keeps only stream sockets.
    pub sk_type: u32,
}

/// `struct pt_regs` offsets of `di`, `si`, `dx`, `r10` on x86_64: the
/// syscall ABI's first four arguments. When the kernel's BTF gives these
/// [`KernelOffsets::regs_arg`], the read program loads the arguments at
/// constant offsets; other layouts take a `bpf_probe_read_kernel` per
/// argument.
pub const X86_64_SYSCALL_ARG_REGS: [u32; 4] = [112, 104, 96, 56];

/// `MSG_PEEK`: a `recvfrom`/`recvmsg` that returns bytes without consuming
/// them (they come again in the next read).
pub const MSG_PEEK: u64 = 2;

/// `MSG_TRUNC`: on a TCP socket, a `recvfrom`/`recvmsg` that consumes bytes
/// without copying them (a server skipping a body it does not want).
pub const MSG_TRUNC: u64 = 0x20;

/// `struct pt_regs` offsets of `orig_ax` (the syscall number) and `cs` on
/// x86_64. The socket-path programs load them at these constant offsets;
/// userspace checks the kernel's BTF agrees before it chooses that path.
pub const X86_64_REGS_ORIG_AX: u32 = 120;
pub const X86_64_REGS_CS: u32 = 136;
/// `ip`: 0 in an io_uring worker's copy of its creator's registers.
pub const X86_64_REGS_IP: u32 = 128;
/// `cs` of a 64-bit user task (`__USER_CS`): anything else is a 32-bit
/// compat task (other syscall numbers) or a kernel thread (no user regs).
pub const X86_64_USER_CS: u64 = 0x33;
