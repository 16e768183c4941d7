//! The process's open-file limit: every connection, webhook body and plugin
//! socket is a descriptor, so the daemon raises its soft limit to the hard
//! limit at start (and logs both). A leaf: it imports nothing of the crate.

/// The open-file limits before and after: `(soft before, soft now, hard)`,
/// or `None` where they cannot be read.
pub fn raise_open_files() -> Option<(u64, u64, u64)> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        Some((before, lim.rlim_cur, lim.rlim_max))
    }
    #[cfg(not(unix))]
    {
        None
    }
}
