//! Giving memory back to the operating system after a burst.
//!
//! glibc's allocator keeps freed memory in its arenas: after a burst of
//! large webhook bodies or of slow consumers' queues, hundreds of megabytes
//! stay resident although nothing uses them. Code that has just freed a lot
//! calls [`release_soon`]; [`run_trimmer`] then returns the free memory with
//! `malloc_trim`, at most once per [`TRIM_INTERVAL`] and off the async workers.
//!
//! A leaf: it imports nothing of the crate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// At most one trim per this interval.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

static WANTED: AtomicBool = AtomicBool::new(false);

/// Asks for free memory to be returned to the OS shortly.
pub fn release_soon() {
    WANTED.store(true, Ordering::Relaxed);
}

/// Returns free heap memory to the OS now (glibc only; elsewhere a no-op).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only walks glibc's own arenas; it takes no
        // pointers from us and is safe to call from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Trims when asked, at most once per [`TRIM_INTERVAL`]. Runs for the daemon's life.
pub async fn run_trimmer() {
    loop {
        tokio::time::sleep(TRIM_INTERVAL).await;
        if WANTED.swap(false, Ordering::Relaxed) {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}
