//! Refusing webhook targets inside the operator's network.
//!
//! The check runs in the HTTP client's resolver, on the addresses it is about to connect to, so
//! a name that resolves to a public address at create time and to 169.254.169.254 at send time
//! (DNS rebinding) is still refused. IP-literal URLs bypass resolvers and are checked before
//! sending with [`check_ip`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A target that policy forbids, named as the client wrote it: the address a name resolved
/// to stays out of the message, which the client reads, so a refusal does not map the
/// operator's network.
#[derive(Debug, thiserror::Error)]
#[error("webhook target {0} is or resolves to a loopback, private, link-local or otherwise internal address")]
pub struct ForbiddenTarget(pub String);

/// Whether `ip` is internal (loopback, private, link-local, CGNAT, benchmarking, unspecified,
/// multicast…). IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64's well-known
/// prefix, 6to4) are judged by that address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking, 198.18.0.0/15
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
                || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001) // local-use NAT64
        }
    }
}

/// The IPv4 address an IPv6 address stands for: `::ffff:a.b.c.d` (mapped), `::a.b.c.d`
/// (compatible, deprecated), `64:ff9b::a.b.c.d` (NAT64's well-known prefix) and
/// `2002:aabb:ccdd::/48` (6to4).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let tail = |hi: u16, lo: u16| {
        std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => Some(tail(hi, lo)),
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(tail(hi, lo)),
        [0x2002, hi, lo, ..] => Some(tail(hi, lo)),
        _ => None,
    }
}

/// The policy: internal addresses are refused unless inside an allowed network.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    allow: Arc<Vec<IpNet>>,
}

impl TargetPolicy {
    /// A policy allowing `allow` on top of public addresses.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow: Arc::new(allow),
        }
    }

    /// Whether the address may be contacted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Checks an IP-literal host.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ForbiddenTarget> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(ForbiddenTarget(ip.to_string()))
        }
    }
}

impl Resolve for TargetPolicy {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(
                    Box::new(ForbiddenTarget(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let p = TargetPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "198.18.0.1",
            "198.19.255.255",
            // IPv4 inside IPv6: NAT64 (well-known and local-use), compatible, 6to4.
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "::10.0.0.1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "fec0::1",
        ] {
            assert!(!p.permits(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "198.20.0.1",
        ] {
            assert!(p.permits(good.parse().unwrap()), "{good}");
        }
        let dev = TargetPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(dev.permits("127.0.0.1".parse().unwrap()));
        assert!(!dev.permits("10.0.0.1".parse().unwrap()));
    }
}
