//! `memset` for the eBPF object.
//!
//! LLVM's BPF backend (the nightly's LLVM 22) lowers zeroed arrays and runs
//! of zeroed struct fields, even 16 bytes of them, to calls to `memset`, and
//! the only `memset` in a `no_std` BPF build is compiler_builtins' (a weak
//! symbol) that stores one byte per loop iteration: `perf` showed it as the
//! agent's most expensive BPF function (~0.8% of the node's CPU under
//! saturating load). This strong definition replaces it and stores 8 bytes
//! per iteration. Still one byte per store: the verifier rejects misaligned
//! stack stores, and the destination's alignment is not known here.
//!
//! Volatile stores: LLVM would otherwise recognise the loop as a memset and
//! call this very function.

use core::ptr::write_volatile;

/// # Safety
/// `s..s + n` must be writable, as for C's `memset`.
///
/// Returns nothing, like compiler_builtins' BPF `memset` it replaces: the
/// verifier rejects returning a pointer to the caller's stack.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(s: *mut u8, c: i32, n: usize) {
    let b = c as u8;
    let mut i = 0usize;
    while i + 8 <= n {
        unsafe {
            write_volatile(s.add(i), b);
            write_volatile(s.add(i + 1), b);
            write_volatile(s.add(i + 2), b);
            write_volatile(s.add(i + 3), b);
            write_volatile(s.add(i + 4), b);
            write_volatile(s.add(i + 5), b);
            write_volatile(s.add(i + 6), b);
            write_volatile(s.add(i + 7), b);
        }
        i += 8;
    }
    while i < n {
        unsafe { write_volatile(s.add(i), b) };
        i += 1;
    }
}

/// Zeroes an array of words with one 8-byte store each, never a `memset`.
#[inline(always)]
pub fn zero_words<const N: usize>(words: &mut core::mem::MaybeUninit<[u64; N]>) {
    let p = words.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < N {
        unsafe { write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// `n & mask`, with the mask kept: a helper's size argument that the
/// verifier must see bounded. LLVM drops a mask it can prove changes
/// nothing (after `if n < 16`), and older verifiers (6.1) then lose the
/// bound when the value is spilled and reloaded, or do not bound `%` at
/// all, and refuse the call ("R2 min value is negative", "R2 max value is
/// outside of the allowed memory range"). `black_box` hides the value from
/// LLVM, so the mask is emitted where the call uses it.
#[inline(always)]
pub fn bounded(n: u64, mask: u64) -> u32 {
    (core::hint::black_box(n) & mask) as u32
}
