//! Asking the CPU to start loading memory the request path is about to read.
//!
//! A redirect reads a few random volunteers' records out of a thousand, each some four
//! hundred bytes over seven cache lines, usually out of cache (the kernel's network buffers
//! pass through between two requests). Read one after the other, each record's misses wait
//! for the branch that decided to read it; hinted at together, they arrive together.

/// Start loading every cache line of `value` (a hint: it changes nothing the program sees).
#[inline]
pub fn lines<T: ?Sized>(value: &T) {
    let start = (value as *const T).cast::<u8>();
    lines_of(start, std::mem::size_of_val(value));
}

/// Start loading the cache lines of the `len` bytes at `start`.
#[inline]
pub fn lines_of(start: *const u8, len: usize) {
    const LINE: usize = 64;
    if len == 0 {
        return;
    }
    let first = start as usize & !(LINE - 1);
    let last = (start as usize + len - 1) & !(LINE - 1);
    let mut at = first;
    while at <= last {
        hint(at as *const u8);
        at += LINE;
    }
}

#[inline]
fn hint(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch never faults and reads nothing into the program's state, whatever
        // the address; SSE, which it needs, is part of x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hinting_any_memory_changes_nothing() {
        let v = vec![7u8; 1000];
        lines_of(v.as_ptr().wrapping_add(3), 997);
        lines(&v[..]);
        lines_of(std::ptr::null(), 0);
        assert!(v.iter().all(|&b| b == 7));
    }
}
