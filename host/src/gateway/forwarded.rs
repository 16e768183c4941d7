//! Who a request really came from, behind a reverse proxy.
//!
//! A proxy on the gateway's own machine (nginx, Caddy) makes every peer
//! look like 127.0.0.1: loopback's exemption from the failed-auth limit,
//! and a gateway without credentials answering loopback, would then extend
//! to the whole network behind the proxy, and every limit per address
//! would count the proxy once. So:
//!
//! - A request carrying proxy headers (`X-Forwarded-For`, `X-Real-IP`,
//!   `Forwarded`) is never local, whatever its peer.
//! - From a peer listed in `gateway.trusted_proxies`, the client is read
//!   from the one header `gateway.client_ip_header` names
//!   (`X-Forwarded-For` by default, `X-Real-IP`, or RFC 7239's
//!   `Forwarded`), right to left, skipping trusted addresses (a client can
//!   write anything at the left; each proxy appends the address it saw).
//!   Only that header: a proxy passes the others through as the client
//!   wrote them, so reading a second one would let a client name itself.
//!   Such a client is never local either, even one named 127.0.0.1: a
//!   proxy that passes a client's own header through instead of appending
//!   to it (nginx does, unless told otherwise) would let anyone say so.
//! - From any other peer the headers are not believed: the client is the
//!   peer, and not local.
//!
//! It knows `http` header names and addresses; nothing of the protocol.

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::config::ClientIpHeader;

/// An address or a network in `gateway.trusted_proxies`: `10.0.0.1`,
/// `10.0.0.0/8`, `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

/// Addresses read from `X-Forwarded-For` at most (a header is bounded by
/// the 64 KiB of the request head anyway).
const MAX_HOPS: usize = 32;

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, a dual-stack socket's view of an
/// IPv4 peer) counts as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| {
            format!("`{s}` is not an IP address or a network (10.0.0.0/8, fd00::/8)")
        })?;
        let net = canonical(net);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let len = u32::from(self.len);
        match (canonical(ip), self.net) {
            (IpAddr::V4(a), IpAddr::V4(n)) => {
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                u32::from(a) & mask == u32::from(n) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(n)) => {
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                u128::from(a) & mask == u128::from(n) & mask
            }
            _ => false,
        }
    }
}

/// Is `ip` in one of the `trusted` networks?
pub fn trusts(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the peer's, or read from a trusted proxy's
    /// headers.
    pub ip: IpAddr,
    /// The request carried proxy headers.
    pub proxied: bool,
    /// `ip` was read from the headers of a trusted proxy, all the way to an
    /// address the proxies vouch for.
    pub vouched: bool,
}

impl Client {
    /// The peer itself, without proxy headers.
    pub fn direct(peer: IpAddr) -> Client {
        Client {
            ip: canonical(peer),
            proxied: false,
            vouched: false,
        }
    }

    /// On this machine: a loopback peer without proxy headers. Nothing
    /// that came through a proxy is, whatever address it names.
    pub fn is_local(&self) -> bool {
        self.ip.is_loopback() && !self.proxied
    }
}

/// `remote` for a log line, with the client a proxy named when there is one:
/// `203.0.113.5 (through 127.0.0.1:50000)`.
pub fn shown(remote: std::net::SocketAddr, peer: Client) -> String {
    if peer.ip == canonical(remote.ip()) {
        remote.to_string()
    } else {
        format!("{} (through {remote})", peer.ip)
    }
}

/// The headers a proxy adds (lowercase).
pub const PROXY_HEADERS: [&str; 3] = ["x-forwarded-for", "x-real-ip", "forwarded"];

/// Does the request carry any of the headers a proxy adds?
pub fn has_proxy_headers(headers: &HeaderMap) -> bool {
    PROXY_HEADERS.iter().any(|h| headers.contains_key(*h))
}

/// One hop: an address, maybe with a port (`1.2.3.4:5678`, `[::1]:5678`);
/// `None` for anything else (`unknown`, `_hidden`, garbage).
fn hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    let (a, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    a.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` of one element of a `Forwarded` header (RFC 7239 §4:
/// `for=192.0.2.60;proto=http;by=203.0.113.43`), unquoted: `None` when the
/// element names none. Parameter names are case-insensitive.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// The hops `header` names, leftmost first (at most [`MAX_HOPS`] + 1 of
/// them are looked at, from the right).
fn hops(headers: &HeaderMap, header: ClientIpHeader) -> Vec<&str> {
    let mut values = headers
        .get_all(header.name())
        .iter()
        .filter_map(|v| v.to_str().ok());
    match header {
        ClientIpHeader::XForwardedFor => values.flat_map(|v| v.split(',')).collect(),
        // One address; of several headers, the last (the nearest proxy's).
        ClientIpHeader::XRealIp => values.next_back().into_iter().collect(),
        // An element without `for=` names no one: garbage, like an entry
        // that is not an address (the walk stops there).
        ClientIpHeader::Forwarded => values
            .flat_map(|v| v.split(','))
            .map(|e| forwarded_for(e).unwrap_or(""))
            .collect(),
    }
}

/// The client of a request from `peer`, named in `header` when `peer` is
/// trusted (see the module's comment).
pub fn client(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[Cidr],
    header: ClientIpHeader,
) -> Client {
    let peer = canonical(peer);
    if !has_proxy_headers(headers) {
        return Client::direct(peer);
    }
    let untrusted = Client {
        ip: peer,
        proxied: true,
        vouched: false,
    };
    if !trusts(trusted, peer) {
        return untrusted;
    }
    let hops = hops(headers, header);
    let mut last = None;
    // Every hop read, all of them trusted proxies: the proxies vouch for
    // the first one named.
    let mut whole = hops.len() <= MAX_HOPS;
    for h in hops.iter().rev().take(MAX_HOPS) {
        let Some(ip) = hop(h) else {
            // Garbage: what lies left of it cannot be followed.
            whole = false;
            break;
        };
        if !trusts(trusted, ip) {
            return Client {
                ip,
                proxied: true,
                vouched: true,
            };
        }
        last = Some(ip);
    }
    match last {
        Some(ip) => Client {
            ip,
            proxied: true,
            vouched: whole,
        },
        None => untrusted,
    }
}

/// Parses `gateway.trusted_proxies`; the error names the bad entry.
pub fn parse_list(list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter()
        .enumerate()
        .map(|(i, s)| Cidr::parse(s).map_err(|e| format!("gateway.trusted_proxies[{i}]: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn networks_contain_what_they_should() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.200.1.2")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!c("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(c("127.0.0.1").contains(ip("::ffff:127.0.0.1")), "mapped");
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!c("0.0.0.0/0").contains(ip("::1")), "families apart");
        assert!(c("fd00::/8").contains(ip("fd12::1")));
        assert!(!c("fd00::/8").contains(ip("fe80::1")));
        assert!(c("::1").contains(ip("::1")));
        assert!(c("172.16.0.0/12").contains(ip("172.31.255.255")));
        assert!(!c("172.16.0.0/12").contains(ip("172.32.0.0")));
        for bad in ["", "nginx", "10.0.0.0/33", "::/129", "10.0.0.1/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        let e = parse_list(&["127.0.0.1".into(), "proxy.local".into()]).unwrap_err();
        assert!(
            e.starts_with("gateway.trusted_proxies[1]: `proxy.local`"),
            "{e}"
        );
    }

    const XFF: ClientIpHeader = ClientIpHeader::XForwardedFor;

    #[test]
    fn without_proxy_headers_the_peer_is_the_client() {
        let c = client(ip("127.0.0.1"), &headers(&[]), &[], XFF);
        assert_eq!(c, Client::direct(ip("127.0.0.1")));
        assert!(c.is_local());
        assert!(!client(ip("10.0.0.1"), &headers(&[]), &[], XFF).is_local());
    }

    #[test]
    fn proxy_headers_from_an_untrusted_peer_are_not_believed_and_not_local() {
        for h in [
            ("x-forwarded-for", "127.0.0.1"),
            ("x-real-ip", "127.0.0.1"),
            ("forwarded", "for=127.0.0.1"),
        ] {
            let c = client(ip("127.0.0.1"), &headers(&[h]), &[], XFF);
            assert_eq!(c.ip, ip("127.0.0.1"), "{h:?}");
            assert!(
                !c.is_local(),
                "{h:?}: a proxy on loopback forwards strangers"
            );
        }
    }

    #[test]
    fn a_trusted_proxy_names_the_client_right_to_left() {
        let trusted = parse_list(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let from = |pairs: &[(&str, &str)]| client(ip("127.0.0.1"), &headers(pairs), &trusted, XFF);
        // nginx's $proxy_add_x_forwarded_for: what the client sent, then its address.
        let c = from(&[("x-forwarded-for", "203.0.113.5")]);
        assert_eq!((c.ip, c.is_local()), (ip("203.0.113.5"), false));
        // A client writing a loopback address at the left gains nothing.
        let c = from(&[("x-forwarded-for", "127.0.0.1, 198.51.100.2, 203.0.113.5")]);
        assert_eq!(c.ip, ip("203.0.113.5"));
        // Trusted hops on the right are skipped; several headers are one list.
        let c = from(&[
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-for", "10.1.2.3:4444"),
        ]);
        assert_eq!(c.ip, ip("198.51.100.2"));
        let c = from(&[("x-forwarded-for", "[2001:db8::7]:80, 10.0.0.2")]);
        assert_eq!(c.ip, ip("2001:db8::7"));
        // Only X-Forwarded-For is read: X-Real-IP or Forwarded alone name
        // no one (the proxy itself, not local).
        for other in [("x-real-ip", "192.0.2.9"), ("forwarded", "for=192.0.2.1")] {
            let c = from(&[other]);
            assert_eq!(
                (c.ip, c.vouched, c.is_local()),
                (ip("127.0.0.1"), false, false)
            );
        }
        // A client the proxy names 127.0.0.1 is that address, but not
        // local: a proxy passing the client's own header through would let
        // anyone claim it.
        let c = from(&[("x-forwarded-for", "127.0.0.1")]);
        assert_eq!(
            (c.ip, c.vouched, c.is_local()),
            (ip("127.0.0.1"), true, false)
        );
        // Garbage stops the walk: the last hop seen, and not local.
        let c = from(&[("x-forwarded-for", "evil, 127.0.0.1")]);
        assert_eq!((c.ip, c.vouched), (ip("127.0.0.1"), false));
        assert!(!c.is_local());
        let c = from(&[("x-forwarded-for", "nonsense")]);
        assert_eq!((c.ip, c.is_local()), (ip("127.0.0.1"), false));
        // Not from the trusted peer: the same headers are not believed.
        let c = client(
            ip("192.0.2.50"),
            &headers(&[("x-forwarded-for", "127.0.0.1")]),
            &trusted,
            XFF,
        );
        assert_eq!((c.ip, c.is_local()), (ip("192.0.2.50"), false));
    }

    #[test]
    fn with_x_real_ip_only_it_is_read() {
        let trusted = parse_list(&["127.0.0.1".into()]).unwrap();
        let from = |pairs: &[(&str, &str)]| {
            client(
                ip("127.0.0.1"),
                &headers(pairs),
                &trusted,
                ClientIpHeader::XRealIp,
            )
        };
        let c = from(&[("x-real-ip", "192.0.2.9")]);
        assert_eq!((c.ip, c.vouched), (ip("192.0.2.9"), true));
        // A proxy that sets X-Real-IP passes the client's X-Forwarded-For
        // through: it is not believed.
        let c = from(&[
            ("x-forwarded-for", "198.51.100.66"),
            ("x-real-ip", "192.0.2.9"),
        ]);
        assert_eq!(c.ip, ip("192.0.2.9"));
        let c = from(&[("x-forwarded-for", "198.51.100.66")]);
        assert_eq!(
            (c.ip, c.vouched, c.is_local()),
            (ip("127.0.0.1"), false, false)
        );
        // Of several, the last (the nearest proxy's).
        let c = from(&[("x-real-ip", "198.51.100.66"), ("x-real-ip", "192.0.2.10")]);
        assert_eq!(c.ip, ip("192.0.2.10"));
    }

    #[test]
    fn forwarded_is_read_by_its_for_parameter_right_to_left() {
        let trusted = parse_list(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let from = |pairs: &[(&str, &str)]| {
            client(
                ip("127.0.0.1"),
                &headers(pairs),
                &trusted,
                ClientIpHeader::Forwarded,
            )
        };
        let c = from(&[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")]);
        assert_eq!(
            (c.ip, c.vouched, c.is_local()),
            (ip("192.0.2.60"), true, false)
        );
        // Quoted, with ports, IPv6 in brackets, names in any case; trusted
        // hops on the right skipped; several headers are one list.
        let c = from(&[(
            "forwarded",
            "for=\"[2001:db8:cafe::17]:4711\", For=\"10.0.0.9:80\";proto=https",
        )]);
        assert_eq!(c.ip, ip("2001:db8:cafe::17"));
        let c = from(&[
            ("forwarded", "for=198.51.100.3"),
            ("forwarded", "proto=https;for=\"192.0.2.43:47011\""),
        ]);
        assert_eq!(c.ip, ip("192.0.2.43"));
        // A client's own element at the left gains nothing.
        let c = from(&[("forwarded", "for=127.0.0.1, for=192.0.2.44")]);
        assert_eq!(c.ip, ip("192.0.2.44"));
        // `unknown`, an obfuscated name or an element without `for=` stop
        // the walk: the last trusted hop, not vouched, not local.
        for v in ["for=unknown", "for=_hidden, for=10.0.0.3", "proto=https"] {
            let c = from(&[("forwarded", v)]);
            assert!(!c.vouched && !c.is_local(), "{v}: {c:?}");
        }
        // X-Forwarded-For is not read when Forwarded is the header.
        let c = from(&[("x-forwarded-for", "198.51.100.66")]);
        assert_eq!((c.ip, c.vouched), (ip("127.0.0.1"), false));
    }
}
