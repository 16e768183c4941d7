//! Lock-poison recovery, written once. A panic while a lock was held leaves
//! plain data (maps, counters) that is still usable: every lock in the
//! daemon is taken through these helpers, which recover the guard instead of
//! propagating the panic to every later caller.
//!
//! A leaf: it imports nothing of the crate.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub trait MutexExt<T> {
    /// Locks, recovering from poison.
    fn guard(&self) -> MutexGuard<'_, T>;
}

impl<T> MutexExt<T> for Mutex<T> {
    fn guard(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub trait RwLockExt<T> {
    /// Read-locks, recovering from poison.
    fn reader(&self) -> RwLockReadGuard<'_, T>;
    /// Write-locks, recovering from poison.
    fn writer(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockExt<T> for RwLock<T> {
    fn reader(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|p| p.into_inner())
    }
    fn writer(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.lock().is_err());
        *m.guard() += 1;
        assert_eq!(*m.guard(), 2);
    }
}
