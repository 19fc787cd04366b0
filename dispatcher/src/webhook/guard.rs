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

/// A target address that policy forbids.
#[derive(Debug, thiserror::Error)]
#[error("webhook target {0} is a loopback, private, link-local or otherwise internal address")]
pub struct ForbiddenTarget(pub String);

/// Whether `ip` is internal (loopback, private, link-local, CGNAT, unspecified, multicast…).
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
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
        }
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
                let shown = addrs.first().map(|a| a.ip().to_string()).unwrap_or(host);
                return Err(
                    Box::new(ForbiddenTarget(shown)) as Box<dyn std::error::Error + Send + Sync>
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
        ] {
            assert!(!p.permits(bad.parse().unwrap()), "{bad}");
        }
        for good in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(p.permits(good.parse().unwrap()), "{good}");
        }
        let dev = TargetPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(dev.permits("127.0.0.1".parse().unwrap()));
        assert!(!dev.permits("10.0.0.1".parse().unwrap()));
    }
}
