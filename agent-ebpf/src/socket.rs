//! From a file descriptor to its TCP socket, by walking kernel structs with
//! the offsets userspace read from BTF (Rust eBPF has no CO-RE).

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use burnwatch_common::offsets::KernelOffsets;

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The TCP socket behind a descriptor.
pub struct TcpSocket {
    pub local_port: u16,
    family: u16,
    sk: *const u8,
}

impl TcpSocket {
    /// The kernel's `struct sock` address: the socket's identity in the
    /// `sock:*` tracepoints.
    #[inline(always)]
    pub fn addr(&self) -> u64 {
        self.sk as u64
    }

    /// The remote end: port (host order) and address (IPv4 as IPv4-mapped
    /// IPv6, `::ffff:a.b.c.d`). Only the client side needs it.
    #[inline(always)]
    pub fn peer(&self, off: &KernelOffsets, addr: &mut [u8; 16]) -> Option<u16> {
        unsafe {
            let port_be: u16 = read_kernel(self.sk, off.skc_dport)?;
            if self.family == AF_INET {
                let v4: [u8; 4] = read_kernel(self.sk, off.skc_daddr)?;
                *addr = [0; 16];
                addr[10] = 0xff;
                addr[11] = 0xff;
                addr[12] = v4[0];
                addr[13] = v4[1];
                addr[14] = v4[2];
                addr[15] = v4[3];
            } else {
                *addr = read_kernel(self.sk, off.skc_v6_daddr)?;
            }
            Some(u16::from_be(port_be))
        }
    }
}

#[inline(always)]
unsafe fn read_kernel<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T).ok() }
}

/// The socket path's `struct sock *` when it is an IPv4 or IPv6 stream
/// socket: two loads (family, type) before anything else is looked at.
#[inline(always)]
pub fn stream_socket(off: &KernelOffsets, sk: *const u8) -> Option<TcpSocket> {
    unsafe {
        let family: u16 = read_kernel(sk, off.skc_family)?;
        if family != AF_INET && family != AF_INET6 {
            return None;
        }
        let ty: u16 = read_kernel(sk, off.sk_type)?;
        if ty != SOCK_STREAM {
            return None;
        }
        let local_port: u16 = read_kernel(sk, off.skc_num)?;
        Some(TcpSocket {
            local_port,
            family,
            sk,
        })
    }
}

/// Walks `task->files->fdt->fd[fd]` to the socket when `fd` is an IPv4 or
/// IPv6 stream socket of the current process.
#[inline(always)]
pub fn tcp_socket(off: &KernelOffsets, fd: u32) -> Option<TcpSocket> {
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files: *const u8 = read_kernel(task, off.task_files)?;
        let fdt: *const u8 = read_kernel(files, off.files_fdt)?;
        let max_fds: u32 = read_kernel(fdt, off.fdt_max_fds)?;
        if fd >= max_fds {
            return None;
        }
        let fd_array: *const *const u8 = read_kernel(fdt, off.fdt_fd)?;
        let file: *const u8 = bpf_probe_read_kernel(fd_array.add(fd as usize)).ok()?;
        let inode: *const u8 = read_kernel(file, off.file_inode)?;
        let mode: u16 = read_kernel(inode, off.inode_mode)?;
        if mode & S_IFMT != S_IFSOCK {
            return None;
        }
        let socket: *const u8 = read_kernel(file, off.file_private_data)?;
        let ty: u16 = read_kernel(socket, off.socket_type)?;
        if ty != SOCK_STREAM {
            return None;
        }
        let sk: *const u8 = read_kernel(socket, off.socket_sk)?;
        let family: u16 = read_kernel(sk, off.skc_family)?;
        if family != AF_INET && family != AF_INET6 {
            return None;
        }
        let local_port: u16 = read_kernel(sk, off.skc_num)?;
        Some(TcpSocket {
            local_port,
            family,
            sk,
        })
    }
}
