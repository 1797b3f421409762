//! How a long-running server gives memory back. glibc's malloc raises its mmap threshold each
//! time a large block is freed, so after the first window tables and checkpoint copies come and
//! go, tables of megabytes are carved from the heap arenas instead, and the holes they leave are
//! kept: over a ten-minute soak the process held 179 MB from the system for 71 MB in use
//! (docs/PERFORMANCE.md, "State and memory"). Fixing the threshold keeps every block of 128 KiB
//! or more in its own mapping, handed back the moment it is freed.

/// Blocks at least this large get their own mapping (glibc's own starting threshold, held fixed).
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Sets the allocator policy for a server process; true when it was applied (glibc on Linux),
/// false elsewhere, where the platform's allocator keeps its own, and when the operator set
/// glibc's own `MALLOC_MMAP_THRESHOLD_` (theirs stands).
pub fn return_freed_memory() -> bool {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tuning parameters; it is called before the
        // runtime starts its threads, and glibc serialises it against allocation anyway.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On glibc a large block freed after the policy is set must leave no resident memory behind
    /// (it is unmapped), where glibc's default would raise its threshold and keep later ones.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_large_block_freed_is_given_back_to_the_system() {
        assert!(return_freed_memory());
        // Other tests allocate beside this one and the statistics are the process's: a trial
        // they disturb is tried again. Without the policy no trial passes: freeing the 16 MB
        // block raises glibc's threshold, and the 8 MB one comes from the heap.
        let trial = || {
            [4usize << 20, 16 << 20, 8 << 20].into_iter().all(|size| {
                let before = mapped_bytes();
                let mut v = vec![1u8; size];
                v[size - 1] = 2;
                std::hint::black_box(&v);
                let during = mapped_bytes();
                drop(v);
                let after = mapped_bytes();
                during >= before + size / 2 && after + size / 2 <= during
            })
        };
        assert!(
            (0..5).any(|_| trial()),
            "large freed blocks stay mapped into the heap"
        );
    }

    /// Bytes glibc holds in mmapped blocks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn mapped_bytes() -> usize {
        // SAFETY: mallinfo2 only reads malloc's statistics.
        unsafe { libc::mallinfo2().hblkhd }
    }
}
