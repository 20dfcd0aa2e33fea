//! The PROXY protocol header that a load balancer (HAProxy's `send-proxy`/`send-proxy-v2`,
//! nginx's `proxy_protocol on`, cloud balancers) puts at the start of each connection to
//! say who the client is: the lowest of a connection's byte layers, present from accept
//! until the header has come, then gone.
//!
//! The parsing itself is the `ppp` crate's, in pure functions over bytes; this module adds
//! what a server must decide on top of it: how long a header may be (a v1 line is at most
//! 107 bytes; a v2 header's declared length is capped), that bytes which cannot begin a
//! header are rejected at once rather than waited on, how a header split across reads is
//! gathered ([`HeaderReader`]), and which address a connection is then served under, by the
//! access rules and the per-address limit ([`HeaderLayer`]).

use std::net::SocketAddr;
use std::time::Instant;

use ppp::v1;
use ppp::v2;

use super::Fault;
use crate::access::{AccessRules, AddressLimit};
use crate::stream::Peer;

/// The longest v1 header: "PROXY TCP6 " + two full IPv6 addresses + two ports + CRLF.
pub(crate) const V1_MAX_BYTES: usize = 107;
/// The v2 signature, then version/command, family/protocol and a 16-bit length.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_PREFIX_BYTES: usize = 16;
/// The most a v2 header may declare after its prefix: addresses (216 bytes for Unix
/// sockets) and TLVs. HAProxy's own TLVs stay far below it.
pub(crate) const V2_MAX_LENGTH: usize = 2048;
/// The most bytes a header can take, of either version.
pub(crate) const MAX_HEADER_BYTES: usize = V2_PREFIX_BYTES + V2_MAX_LENGTH;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Header {
    /// A header may still be arriving: read more.
    Incomplete,
    /// A header of `len` bytes; `client` is the address it carries, or `None` for a v2
    /// `LOCAL` command (a balancer's health check) and `UNKNOWN`/unspecified addresses, which
    /// are served under the balancer's own address.
    Complete {
        len: usize,
        client: Option<SocketAddr>,
        version: u8,
    },
    /// Not a valid header: the connection is closed, nothing of it echoed.
    Invalid(String),
}

/// Reads a header at the start of `bytes`, the first bytes a connection sent.
pub(crate) fn parse(bytes: &[u8]) -> Header {
    let signature_seen = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..signature_seen] == V2_SIGNATURE[..signature_seen] {
        return parse_v2(bytes);
    }
    let prefix_seen = bytes.len().min(b"PROXY ".len());
    if bytes[..prefix_seen] == b"PROXY "[..prefix_seen] {
        return parse_v1(bytes);
    }
    Header::Invalid("not a PROXY protocol header".to_owned())
}

fn parse_v2(bytes: &[u8]) -> Header {
    if bytes.len() < V2_PREFIX_BYTES {
        return Header::Incomplete;
    }
    let declared = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if declared > V2_MAX_LENGTH {
        return Header::Invalid(format!(
            "v2 header declares {declared} bytes, over the limit of {V2_MAX_LENGTH}"
        ));
    }
    let len = V2_PREFIX_BYTES + declared;
    if bytes.len() < len {
        return Header::Incomplete;
    }
    match v2::Header::try_from(&bytes[..len]) {
        Ok(header) => {
            let client = match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
            };
            Header::Complete {
                len,
                client,
                version: 2,
            }
        }
        Err(e) => Header::Invalid(format!("invalid v2 header: {e}")),
    }
}

fn parse_v1(bytes: &[u8]) -> Header {
    let window = &bytes[..bytes.len().min(V1_MAX_BYTES)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if bytes.len() >= V1_MAX_BYTES {
            Header::Invalid(format!("v1 header longer than {V1_MAX_BYTES} bytes"))
        } else {
            Header::Incomplete
        };
    };
    let len = end + 2;
    match v1::Header::try_from(&bytes[..len]) {
        Ok(header) => {
            let client = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Header::Complete {
                len,
                client,
                version: 1,
            }
        }
        Err(e) => Header::Invalid(format!("invalid v1 header: {e}")),
    }
}

/// A header arriving over several reads: keeps what came of it, at most
/// [`MAX_HEADER_BYTES`], and nothing once it is whole.
#[derive(Debug, Default)]
pub(crate) struct HeaderReader {
    bytes: Vec<u8>,
}

impl HeaderReader {
    /// Reads on with the bytes of one more read. A complete header's `len` is how much of
    /// `arrived` it took: the client's own bytes start there.
    pub(crate) fn take(&mut self, arrived: &[u8]) -> Header {
        let before = self.bytes.len();
        let parsed = if before == 0 {
            // Most headers come whole in the first read: parsed in place, never copied.
            parse(arrived)
        } else {
            let take = arrived.len().min(MAX_HEADER_BYTES.saturating_sub(before));
            self.bytes.extend_from_slice(&arrived[..take]);
            parse(&self.bytes)
        };
        match parsed {
            Header::Incomplete => {
                if before == 0 {
                    let take = arrived.len().min(MAX_HEADER_BYTES);
                    self.bytes.extend_from_slice(&arrived[..take]);
                }
                Header::Incomplete
            }
            Header::Complete {
                len,
                client,
                version,
            } => Header::Complete {
                len: len - before,
                client,
                version,
            },
            invalid => invalid,
        }
    }
}

/// The layer a connection from a `--proxy-from` source starts with: until its header has
/// come, nothing of the connection is answered.
pub(crate) struct HeaderLayer {
    reader: HeaderReader,
    /// When it must be complete.
    pub deadline: Instant,
}

impl HeaderLayer {
    pub fn new(deadline: Instant) -> Self {
        HeaderLayer {
            reader: HeaderReader::default(),
            deadline,
        }
    }

    /// Takes the header from what arrived, after what arrived before. Once it is complete,
    /// the connection is the client's from then on (`peer` is changed to the address it
    /// names, checked against the access lists and counted under the per-address limit),
    /// and the returned offset is where the client's own bytes start in `arrived`.
    pub fn take(
        &mut self,
        arrived: &[u8],
        peer: &mut Peer,
        rules: &AccessRules,
        addresses: Option<&mut AddressLimit>,
    ) -> Result<Option<usize>, Fault> {
        match self.reader.take(arrived) {
            Header::Incomplete => Ok(None),
            Header::Invalid(reason) => Err(Fault::ProxyHeader(reason)),
            Header::Complete {
                len,
                client,
                version,
            } => {
                if let Some(client) = client.filter(|c| !rules.admits(c.ip())) {
                    // Still awaiting its header as far as the table knows: never counted
                    // under an address, so nothing to uncount when it closes.
                    *peer = Peer::Ip(client);
                    return Err(Fault::AccessDenied);
                }
                let balancer = peer.clone();
                if let Some(client) = client {
                    *peer = Peer::Ip(client);
                    log::debug!("{client}: connected through {balancer} (PROXY v{version})");
                } else {
                    log::debug!(
                        "{balancer}: PROXY v{version} header without a client address (LOCAL, \
                         as health checks send, or unknown); serving it as the balancer's"
                    );
                }
                // Counted under its address before any of its bytes is answered.
                if let (Some(limit), Peer::Ip(client)) = (addresses, &*peer) {
                    if !limit.admit(*client) {
                        return Err(Fault::AddressLimit);
                    }
                }
                Ok(Some(len))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_headers_name_the_client() {
        let header = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 4040\r\nhello\n";
        assert_eq!(
            parse(header),
            Header::Complete {
                len: 46,
                client: Some("192.0.2.7:56324".parse().unwrap()),
                version: 1
            }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert!(matches!(
            parse(unknown),
            Header::Complete {
                client: None,
                len: 15,
                ..
            }
        ));
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), Header::Incomplete);
        assert_eq!(parse(b"PRO"), Header::Incomplete);
    }

    #[test]
    fn garbage_and_overlong_headers_are_invalid_at_once() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Header::Invalid(_)));
        assert!(matches!(parse(b"hello\n"), Header::Invalid(_)));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(V1_MAX_BYTES, b'1');
        assert!(matches!(parse(&long), Header::Invalid(m) if m.contains("107")));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert!(matches!(parse(&v2), Header::Invalid(m) if m.contains("65535")));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

        /// A valid header of either version naming `client`, with optional TLVs for v2.
        fn header(client: SocketAddr, server: SocketAddr, v2: bool, tlv: &[u8]) -> Vec<u8> {
            if !v2 {
                let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
                return format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    client.ip(),
                    server.ip(),
                    client.port(),
                    server.port()
                )
                .into_bytes();
            }
            let addresses: ppp::v2::Addresses = (client, server).into();
            let mut builder = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                addresses,
            );
            if !tlv.is_empty() {
                builder = builder.write_tlv(ppp::v2::Type::NoOp, tlv).unwrap();
            }
            builder.build().unwrap()
        }

        fn address() -> impl Strategy<Value = (IpAddr, u16)> {
            prop_oneof![
                any::<u32>().prop_map(|ip| IpAddr::V4(Ipv4Addr::from(ip))),
                any::<u128>().prop_map(|ip| IpAddr::V6(Ipv6Addr::from(ip))),
            ]
            .prop_flat_map(|ip| (Just(ip), any::<u16>()))
        }

        proptest! {
            #[test]
            fn any_header_cut_anywhere_waits_then_names_its_client(
                (client_ip, client_port) in address(),
                server_port in any::<u16>(),
                v2 in any::<bool>(),
                tlv in proptest::collection::vec(any::<u8>(), 0..64),
                after in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let client = SocketAddr::new(client_ip, client_port);
                let server_ip = if client_ip.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    IpAddr::V6(Ipv6Addr::LOCALHOST)
                };
                let server = SocketAddr::new(server_ip, server_port);
                let header = header(client, server, v2, &tlv);
                for cut in 0..header.len() {
                    prop_assert_eq!(parse(&header[..cut]), Header::Incomplete, "cut at {}", cut);
                }
                let mut stream = header.clone();
                stream.extend_from_slice(&after);
                prop_assert_eq!(
                    parse(&stream),
                    Header::Complete {
                        len: header.len(),
                        client: Some(client),
                        version: if v2 { 2 } else { 1 },
                    }
                );
            }
        }
    }
}
