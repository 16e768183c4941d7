//! Shares per remote address: how many unauthenticated connections, and how
//! many webhook bodies being read, one address holds at once.
//!
//! The global bounds (`max_connections`, `max_webhook_bodies`) keep the
//! daemon alive under a flood; these keep one peer from taking all of them
//! and shutting everybody else out. An IPv6 address counts by its /64 (one
//! host usually has a whole one); an IPv4-mapped IPv6 address counts as the
//! IPv4 address. An entry lives only while its address holds a slot, so the
//! table never outgrows the connections themselves.

use crate::sync::MutexExt;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// What one address is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    /// The first 64 bits.
    V6(u64),
}

impl IpKey {
    pub fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(u32::from(v4)),
                None => IpKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Counts of slots held per address.
#[derive(Default)]
pub struct PerIp {
    held: Mutex<HashMap<IpKey, usize>>,
}

/// One slot, given back when dropped.
pub struct IpSlot {
    owner: Arc<PerIp>,
    key: IpKey,
}

impl std::fmt::Debug for IpSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpSlot({:?})", self.key)
    }
}

impl PerIp {
    /// A slot for `ip` when it holds fewer than `max` (`max == 0`: no limit).
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let key = IpKey::of(ip);
        let mut held = self.held.guard();
        let n = held.entry(key).or_insert(0);
        if max != 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: self.clone(),
            key,
        })
    }

    /// Slots `ip` holds now.
    #[cfg(test)]
    pub fn held_by(&self, ip: IpAddr) -> usize {
        self.held.guard().get(&IpKey::of(ip)).copied().unwrap_or(0)
    }

    /// Addresses holding a slot.
    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.held.guard().len()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut held = self.owner.held.guard();
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slots_are_bounded_per_address_and_given_back() {
        let p = Arc::new(PerIp::default());
        let a: Vec<_> = (0..3)
            .map(|_| p.try_take(ip("10.0.0.1"), 3).expect("under the bound"))
            .collect();
        assert!(
            p.try_take(ip("10.0.0.1"), 3).is_none(),
            "a fourth is refused"
        );
        // Another address has its own share.
        let b = p.try_take(ip("10.0.0.2"), 3).expect("another address");
        assert_eq!(p.held_by(ip("10.0.0.1")), 3);
        drop(a);
        assert_eq!(p.held_by(ip("10.0.0.1")), 0);
        assert_eq!(
            p.addresses(),
            1,
            "an address holding nothing leaves the table"
        );
        assert!(p.try_take(ip("10.0.0.1"), 3).is_some());
        drop(b);
        // Refused attempts leave nothing behind either.
        assert!(p.try_take(ip("10.0.0.9"), 0).is_some(), "0: no limit");
        assert_eq!(p.addresses(), 0);
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let p = Arc::new(PerIp::default());
        let _a = p.try_take(ip("2001:db8:1:2::1"), 2).unwrap();
        let _b = p.try_take(ip("2001:db8:1:2:ffff::7"), 2).unwrap();
        assert!(
            p.try_take(ip("2001:db8:1:2:abcd::1"), 2).is_none(),
            "the same /64 shares one bound"
        );
        assert!(p.try_take(ip("2001:db8:1:3::1"), 2).is_some());
        let _c = p.try_take(ip("192.0.2.1"), 1).unwrap();
        assert!(p.try_take(ip("::ffff:192.0.2.1"), 1).is_none());
    }

    #[test]
    fn a_refused_take_does_not_leave_an_entry() {
        let p = Arc::new(PerIp::default());
        let s = p.try_take(ip("10.0.0.1"), 1).unwrap();
        assert!(p.try_take(ip("10.0.0.1"), 1).is_none());
        drop(s);
        assert_eq!(p.addresses(), 0);
    }
}
