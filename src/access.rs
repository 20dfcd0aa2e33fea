//! Who may connect and whose address to believe: the allow and deny lists (`--allow`,
//! `--deny`), the sources whose PROXY header is believed (`--proxy-from`, or everyone with
//! `--proxy-protocol` alone), and the count of connections per client address
//! (`--max-connections-per-ip`).
//!
//! It is a room of its own, below the acceptor (which checks a socket's peer before a byte
//! is read), the connection table (which counts a connection under its socket's address
//! when it is let in) and the connection (which checks and counts it under the address its
//! PROXY header names, known only when the header arrives), so that none of them has to
//! reach into another.
//!
//! Lists are merged into sorted, disjoint address ranges when the server starts, and an
//! address is looked up by bisection: O(log n) in the list's length, once per connection
//! (twice behind a balancer), nothing per request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ipnet::IpNet;

use crate::config::Config;
use crate::stream::Peer;
use crate::warning::{suppressed_note, RateLimit};

/// A set of addresses given as CIDR blocks, IPv4 and IPv6 apart, as sorted disjoint ranges
/// of the addresses' numbers. A block of IPv4-mapped addresses (within `::ffff:0:0/96`, the
/// form in which an IPv6 socket names its IPv4 clients) is the IPv4 block it maps, since
/// those clients are looked up as the IPv4 addresses they are; any other IPv6 block holds
/// IPv6 clients only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AddressSet {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl AddressSet {
    pub fn new(blocks: &[IpNet]) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for block in blocks {
            match block.trunc() {
                IpNet::V4(net) => v4.push((
                    u32::from(net.network()).into(),
                    u32::from(net.broadcast()).into(),
                )),
                IpNet::V6(net) => match mapped_block(net) {
                    Some(net) => v4.push((
                        u32::from(net.network()).into(),
                        u32::from(net.broadcast()).into(),
                    )),
                    None => v6.push((net.network().into(), net.broadcast().into())),
                },
            }
        }
        AddressSet {
            v4: merged(v4),
            v6: merged(v6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in one of the blocks. An IPv4 address seen through an IPv6 socket
    /// (`::ffff:a.b.c.d`) is taken as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => within(&self.v4, u32::from(ip).into()),
            IpAddr::V6(ip) => within(&self.v6, u128::from(ip)),
        }
    }
}

/// The IPv4 block that an IPv6 block of IPv4-mapped addresses stands for, if it is one.
fn mapped_block(net: ipnet::Ipv6Net) -> Option<ipnet::Ipv4Net> {
    let mapped = net.network().to_ipv4_mapped()?;
    let prefix = net.prefix_len().checked_sub(96)?;
    ipnet::Ipv4Net::new(mapped, prefix).ok()
}

/// Ranges sorted by start, overlapping or adjacent ones joined.
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

fn within(ranges: &[(u128, u128)], x: u128) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after > 0 && x <= ranges[after - 1].1
}

/// `--allow` and `--deny`: who may connect. Deny wins over allow; with no allow list,
/// everyone not denied may.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccessRules {
    allow: Option<AddressSet>,
    deny: AddressSet,
}

impl AccessRules {
    pub fn new(config: &Config) -> Self {
        AccessRules {
            allow: (!config.allow.is_empty()).then(|| AddressSet::new(&config.allow)),
            deny: AddressSet::new(&config.deny),
        }
    }

    pub fn admits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|allow| allow.contains(ip))
    }

    /// Whether any list is given: without one, nothing is looked up.
    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }
}

/// Whose PROXY protocol header is expected, and so believed: every connection's with
/// `--proxy-protocol` alone, only those from `--proxy-from` sources otherwise (the others
/// are direct clients, never parsed for a header), nobody's without either.
#[derive(Debug, Clone, Default)]
pub(crate) enum ProxySources {
    #[default]
    Nobody,
    Everyone,
    From(AddressSet),
}

impl ProxySources {
    pub fn new(config: &Config) -> Self {
        if !config.proxy_from.is_empty() {
            ProxySources::From(AddressSet::new(&config.proxy_from))
        } else if config.proxy_protocol {
            ProxySources::Everyone
        } else {
            ProxySources::Nobody
        }
    }

    /// Whether a connection from `peer` must begin with a PROXY header. A Unix socket's
    /// clients have no address to name a source by: they must when every client must.
    pub fn expects_header_from(&self, peer: &Peer) -> bool {
        match peer.ip() {
            Some(ip) => self.expects_header(ip),
            None => matches!(self, ProxySources::Everyone),
        }
    }

    /// Whether a connection from `peer` must begin with a PROXY header.
    pub fn expects_header(&self, peer: IpAddr) -> bool {
        match self {
            ProxySources::Nobody => false,
            ProxySources::Everyone => true,
            ProxySources::From(sources) => sources.contains(peer),
        }
    }

    /// Whether any connection may have to send a header.
    pub fn any(&self) -> bool {
        !matches!(self, ProxySources::Nobody)
    }
}

/// Warns, at most once a second, that a connection from `peer` was refused by `--allow` or
/// `--deny` (`what` says which address: the socket's, or the one a PROXY header named).
pub(crate) fn warn_refused(
    warning: &mut RateLimit,
    peer: &dyn std::fmt::Display,
    what: &str,
    now: Instant,
) {
    if let Some(suppressed) = warning.allow(now) {
        log::warn!(
            "{peer}: refused by --allow/--deny ({what}); connection closed before anything \
             was read{}",
            suppressed_note(suppressed).replace("similar warnings", "other refusals")
        );
    }
}

/// Connections per client address, and the limit on them (`--max-connections-per-ip`). An
/// IPv4 client counts under its IPv4 address however it is written (`10.0.0.1` from an
/// IPv4 socket or header, `::ffff:10.0.0.1` from an IPv6 one): it is one client.
pub(crate) struct AddressLimit {
    counts: HashMap<IpAddr, usize>,
    limit: usize,
    warning: RateLimit,
}

impl AddressLimit {
    pub fn new(limit: usize) -> Self {
        AddressLimit {
            counts: HashMap::new(),
            limit,
            warning: RateLimit::default(),
        }
    }

    pub fn count(&self, ip: IpAddr) -> usize {
        self.counts.get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    pub fn add(&mut self, ip: IpAddr) -> usize {
        let count = self.counts.entry(ip.to_canonical()).or_insert(0);
        *count += 1;
        *count
    }

    pub fn remove(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if let Some(count) = self.counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&ip);
            }
        }
    }

    /// Counts a connection under `peer`'s address, known only now (from a PROXY header);
    /// false, with a rate-limited warning, if that takes the address over its limit. The
    /// connection is counted either way: closing it uncounts it.
    pub fn admit(&mut self, peer: SocketAddr) -> bool {
        if self.add(peer.ip()) <= self.limit {
            return true;
        }
        if let Some(suppressed) = self.warning.allow(Instant::now()) {
            log::warn!(
                "{} already holds {} connections (--max-connections-per-ip); closing the new \
                 one from {peer}{}",
                peer.ip(),
                self.limit,
                suppressed_note(suppressed)
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|b| b.parse().unwrap()).collect()
    }

    #[test]
    fn a_set_holds_exactly_its_blocks_ipv4_and_ipv6() {
        let set = AddressSet::new(&blocks(&[
            "10.0.0.0/8",
            "10.1.0.0/16", // inside the first
            "192.168.1.7/32",
            "192.168.1.8/31", // adjacent: joined
            "172.16.5.9/12",  // host bits set: the block is 172.16.0.0/12
            "2001:db8::/32",
            "::1/128",
        ]));
        assert_eq!(set.v4.len(), 3);
        for yes in [
            "10.0.0.0",
            "10.255.255.255",
            "192.168.1.7",
            "192.168.1.9",
            "172.31.0.1",
            "2001:db8:ffff::1",
            "::1",
            "::ffff:10.2.3.4",
        ] {
            assert!(set.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.1.6",
            "192.168.1.10",
            "172.32.0.0",
            "2001:db9::",
            "::2",
            "::ffff:11.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!set.contains(no.parse().unwrap()), "{no}");
        }
        let everything = AddressSet::new(&blocks(&["0.0.0.0/0", "::/0"]));
        assert!(everything.contains("255.255.255.255".parse().unwrap()));
        assert!(everything.contains("ffff::".parse().unwrap()));
        assert!(!AddressSet::new(&[]).contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn mapped_blocks_hold_the_ipv4_clients_they_name() {
        let set = AddressSet::new(&blocks(&["::ffff:127.0.0.66/128", "::ffff:10.0.0.0/104"]));
        assert_eq!(
            set,
            AddressSet::new(&blocks(&["127.0.0.66/32", "10.0.0.0/8"]))
        );
        for yes in [
            "127.0.0.66",
            "::ffff:127.0.0.66",
            "10.9.8.7",
            "::ffff:10.1.1.1",
        ] {
            assert!(set.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["127.0.0.65", "::ffff:127.0.0.67", "11.0.0.0"] {
            assert!(!set.contains(no.parse().unwrap()), "{no}");
        }
        // A block wider than the mapped range is an IPv6 block: it holds IPv6 clients.
        let wide = AddressSet::new(&blocks(&["::/64"]));
        assert!(wide.contains("::2".parse().unwrap()));
        assert!(!wide.contains("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn one_client_counts_once_however_its_address_is_written() {
        let mut limit = AddressLimit::new(1);
        assert!(limit.admit("10.0.0.1:5000".parse().unwrap()));
        assert!(!limit.admit("[::ffff:10.0.0.1]:5001".parse().unwrap()));
        assert_eq!(limit.count("::ffff:10.0.0.1".parse().unwrap()), 2);
        limit.remove("::ffff:10.0.0.1".parse().unwrap());
        limit.remove("10.0.0.1".parse().unwrap());
        assert_eq!(limit.count("10.0.0.1".parse().unwrap()), 0);
    }

    #[test]
    fn deny_wins_over_allow() {
        let config = Config {
            allow: blocks(&["127.0.0.0/8", "::1/128"]),
            deny: blocks(&["127.0.0.66/32"]),
            ..Config::default()
        };
        let rules = AccessRules::new(&config);
        assert!(rules.admits("127.0.0.1".parse().unwrap()));
        assert!(rules.admits("::1".parse().unwrap()));
        assert!(!rules.admits("127.0.0.66".parse().unwrap()));
        assert!(!rules.admits("10.0.0.1".parse().unwrap()));
        assert!(AccessRules::new(&Config::default()).is_open());
        let deny_only = AccessRules::new(&Config {
            deny: blocks(&["10.0.0.0/8"]),
            ..Config::default()
        });
        assert!(deny_only.admits("192.0.2.1".parse().unwrap()));
        assert!(!deny_only.admits("10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn a_header_is_expected_only_from_the_sources_named() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(!ProxySources::new(&Config::default()).expects_header(ip("127.0.0.2")));
        let everyone = ProxySources::new(&Config {
            proxy_protocol: true,
            ..Config::default()
        });
        assert!(everyone.expects_header(ip("203.0.113.9")));
        let balancer = ProxySources::new(&Config {
            proxy_protocol: true,
            proxy_from: blocks(&["127.0.0.2/32"]),
            ..Config::default()
        });
        assert!(balancer.expects_header(ip("127.0.0.2")));
        assert!(!balancer.expects_header(ip("127.0.0.3")));
    }
}
