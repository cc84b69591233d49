//! Reading a whole BPF hash map in a few syscalls (`BPF_MAP_LOOKUP_BATCH`,
//! Linux 5.6+).
//!
//! Written by hand because aya 0.14 has no batch operations: its map
//! iterator costs two syscalls per entry (`get_next_key`, then `lookup`),
//! and `get_next_key` rescans from the entry's bucket. At 100,000 tenants
//! that iteration was most of the agent's CPU. A batch lookup copies up to
//! [`BATCH`] entries per syscall into buffers that are reused every poll,
//! so a read allocates nothing once they exist.
//!
//! Entries added or removed during a read may or may not be seen, as with
//! the iterator; counts only grow, and the next poll sees them.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries per syscall: 65,536 entries in 64 syscalls, buffers of a few
/// hundred KiB.
const BATCH: usize = 1024;
/// `ENOTSUPP` (kernel-internal, but returned to userspace by map types
/// without batch support).
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads every entry of a hash map with keys `K` and values `V` (both
/// `#[repr(C)]` plain data, as the kernel writes them byte for byte).
pub struct BatchReader<K, V> {
    fd: OwnedFd,
    buffers: Mutex<Buffers<K, V>>,
}

struct Buffers<K, V> {
    keys: Vec<MaybeUninit<K>>,
    values: Vec<MaybeUninit<V>>,
}

impl<K: aya::Pod, V: aya::Pod> BatchReader<K, V> {
    /// `fd`: the map (a duplicate of the handle aya holds).
    pub fn new(fd: OwnedFd) -> Self {
        BatchReader {
            fd,
            buffers: Mutex::new(Buffers {
                keys: Vec::new(),
                values: Vec::new(),
            }),
        }
    }

    /// Calls `f` with every entry. `Ok(false)`: this kernel has no batch
    /// lookup for the map (nothing was read; use the iterator).
    pub fn read(&self, mut f: impl FnMut(&K, &V)) -> io::Result<bool> {
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let Buffers { keys, values } = &mut *buffers;
        if keys.len() < BATCH {
            keys.resize_with(BATCH, MaybeUninit::uninit);
            values.resize_with(BATCH, MaybeUninit::uninit);
        }
        // The position token: a bucket index (u32) for hash maps; sized
        // generously.
        let mut token_in = [0u64; 16];
        let mut token_out = [0u64; 16];
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
                out_batch: token_out.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: keys.len() as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>() as u32,
                )
            };
            let done = if rc == 0 {
                false
            } else {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    // The end of the map (the last entries came with it).
                    Some(libc::ENOENT) => true,
                    // A bucket holds more entries than the buffers: grow.
                    Some(libc::ENOSPC) if attr.count == 0 => {
                        let n = keys.len() * 2;
                        keys.resize_with(n, MaybeUninit::uninit);
                        values.resize_with(n, MaybeUninit::uninit);
                        continue;
                    }
                    Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if first => {
                        return Ok(false);
                    }
                    _ => return Err(err),
                }
            };
            let n = (attr.count as usize).min(keys.len());
            for i in 0..n {
                // The kernel wrote entries 0..count whole.
                let (k, v) = unsafe { (keys[i].assume_init_ref(), values[i].assume_init_ref()) };
                f(k, v);
            }
            if done {
                return Ok(true);
            }
            token_in = token_out;
            first = false;
        }
    }
}
