//! Who may connect and whose address to believe: `--allow`/`--deny` on the socket's peer
//! (and on the client a trusted PROXY header names), and `--proxy-from`, which makes only
//! the named sources' headers believed while everyone else is a direct client on the same
//! port. Clients play several hosts from 127.0.0.x and `::1`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use common::captured_log::captured_log;
use common::{assert_echo, TestServer};
use kv_server::config::IpNet;
use kv_server::{Config, Echo};
use ppp::v2::{Builder, Command, IPv4, Protocol, Version};
use socket2::{Domain, Socket, Type};

/// CIDR blocks; a bare address is a block of one, as on the command line.
fn blocks(list: &[&str]) -> Vec<IpNet> {
    list.iter()
        .map(|block| match block.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => block.parse().unwrap(),
        })
        .collect()
}

/// A server on 127.0.0.1, with metrics.
fn start(config: Config) -> TestServer {
    captured_log();
    TestServer::start_with(with_metrics(config), Box::new(Echo))
}

/// A server on `[::]`, which takes IPv4 clients too (as `::ffff:a.b.c.d`).
fn start_dual_stack(config: Config) -> TestServer {
    captured_log();
    let config = Config {
        listen: "[::]:0".parse().unwrap(),
        ..with_metrics(config)
    };
    TestServer::start_listening(config, Box::new(Echo))
}

fn with_metrics(config: Config) -> Config {
    Config {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        proxy_header_timeout: Duration::from_secs(5),
        ..config
    }
}

/// A client from `source` (any 127.0.0.0/8 address, or `::1`).
fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let source: IpAddr = source.parse().unwrap();
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    stream
}

/// The server closes the connection without echoing anything of `line`: the client sees the
/// end of stream (or a reset, if the line arrived before the close).
fn assert_refused(stream: &mut TcpStream, line: &[u8]) {
    let _ = stream.write_all(line);
    let mut back = Vec::new();
    match stream.read_to_end(&mut back) {
        Ok(_) => assert!(back.is_empty(), "nothing echoed, got {back:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

fn closed_for_access(server: &TestServer) -> f64 {
    common::scrape(server.metrics.unwrap())
        ["kv_server_connections_closed_total{reason=\"access_denied\"}"]
}

/// A v2 header from a balancer naming `client`.
fn header_naming(client: [u8; 4], port: u16) -> Vec<u8> {
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        IPv4::new(client, [127, 0, 0, 1], port, 4040),
    )
    .build()
    .unwrap()
}

#[test]
fn allow_and_deny_lists_ipv4_with_deny_over_allow() {
    let server = start(Config {
        allow: blocks(&["127.0.0.0/24"]),
        deny: blocks(&["127.0.0.7"]),
        ..Config::default()
    });
    assert_refused(&mut connect_from("127.0.0.7", server.addr), b"denied\n");
    assert_refused(
        &mut connect_from("127.0.1.1", server.addr),
        b"not allowed\n",
    );
    let mut allowed = connect_from("127.0.0.8", server.addr);
    assert_echo(&mut allowed, b"allowed and not denied\n");
    assert_eq!(closed_for_access(&server), 2.0);
    assert!(captured_log().contains("127.0.0.7"));
}

#[test]
fn allow_and_deny_lists_ipv6_on_a_dual_stack_port() {
    let server = start_dual_stack(Config {
        deny: blocks(&["::1/128"]),
        ..Config::default()
    });
    let port = server.addr.port();
    let ipv6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let ipv4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_refused(&mut connect_from("::1", ipv6), b"denied over IPv6\n");
    // An IPv4 client on the same socket (seen as ::ffff:127.0.0.1) is not in an IPv6 block.
    assert_echo(&mut connect_from("127.0.0.1", ipv4), b"IPv4 served\n");

    let ipv6_only = start_dual_stack(Config {
        allow: blocks(&["::1"]),
        ..Config::default()
    });
    let port = ipv6_only.addr.port();
    assert_echo(
        &mut connect_from("::1", format!("[::1]:{port}").parse().unwrap()),
        b"IPv6 allowed\n",
    );
    assert_refused(
        &mut connect_from("127.0.0.1", format!("127.0.0.1:{port}").parse().unwrap()),
        b"IPv4 not on the list\n",
    );
    // An IPv4 block matches an IPv4 client on a dual-stack socket.
    let ipv4_block = start_dual_stack(Config {
        allow: blocks(&["127.0.0.0/8"]),
        ..Config::default()
    });
    let port = ipv4_block.addr.port();
    assert_echo(
        &mut connect_from("127.0.0.5", format!("127.0.0.1:{port}").parse().unwrap()),
        b"mapped IPv4 matched\n",
    );
}

/// A dual-stack socket names its IPv4 clients `::ffff:a.b.c.d`, as the server's own logs do:
/// a block written that way holds those clients, for TCP and for datagrams.
#[test]
fn mapped_blocks_refuse_the_ipv4_clients_they_name() {
    let server = start_dual_stack(Config {
        deny: blocks(&["::ffff:127.0.0.66", "::ffff:127.0.1.0/120"]),
        udp: true,
        udp_rate_per_source: 0,
        ..Config::default()
    });
    let port = server.addr.port();
    let ipv4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_refused(
        &mut connect_from("127.0.0.66", ipv4),
        b"mapped host denied
",
    );
    assert_refused(
        &mut connect_from("127.0.1.9", ipv4),
        b"mapped block denied
",
    );
    assert_echo(
        &mut connect_from("127.0.0.67", ipv4),
        b"the next one served
",
    );
    assert_eq!(closed_for_access(&server), 2.0);

    let udp = std::net::UdpSocket::bind("127.0.0.66:0").unwrap();
    udp.send_to(b"denied datagram", ipv4).unwrap();
    let served = std::net::UdpSocket::bind("127.0.0.67:0").unwrap();
    served.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    served.send_to(b"served datagram", ipv4).unwrap();
    let mut back = [0u8; 64];
    let (len, _) = served.recv_from(&mut back).unwrap();
    assert_eq!(&back[..len], b"served datagram");
    let dropped = common::scrape(server.metrics.unwrap())
        ["kv_server_udp_datagrams_dropped_total{reason=\"access_denied\"}"];
    assert_eq!(dropped, 1.0);
}

/// A client named by a trusted header counts once under `--max-connections-per-ip`,
/// whether the header writes it as IPv4 or as an IPv4-mapped IPv6 address.
#[test]
fn the_per_address_limit_counts_a_mapped_address_as_its_ipv4_one() {
    use ppp::v2::IPv6;
    let server = start(Config {
        proxy_from: blocks(&["127.0.0.2"]),
        max_connections_per_ip: Some(1),
        ..Config::default()
    });
    let mut first = connect_from("127.0.0.2", server.addr);
    let mut header = header_naming([10, 0, 0, 1], 9000);
    header.extend_from_slice(b"as IPv4\n");
    first.write_all(&header).unwrap();
    let mut back = vec![0u8; b"as IPv4\n".len()];
    first.read_exact(&mut back).unwrap();

    let mapped: std::net::Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
    let mut header = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        IPv6::new(mapped.octets(), [0; 16], 9001, 4040),
    )
    .build()
    .unwrap();
    header.extend_from_slice(b"as mapped IPv6\n");
    let mut second = connect_from("127.0.0.2", server.addr);
    assert_refused(&mut second, &header);
}

/// `--proxy-from 127.0.0.2`: the balancer's header names the client; a direct client on the
/// same port is served without one; a header a direct client sends is only data.
#[test]
fn a_mixed_port_believes_only_the_balancer() {
    let server = start(Config {
        proxy_from: blocks(&["127.0.0.2/32"]),
        ..Config::default()
    });
    let mut balancer = connect_from("127.0.0.2", server.addr);
    let mut first = header_naming([198, 51, 100, 20], 41_000);
    first.extend_from_slice(b"through the balancer\n");
    balancer.write_all(&first).unwrap();
    let mut back = vec![0u8; b"through the balancer\n".len()];
    balancer.read_exact(&mut back).unwrap();
    assert_eq!(back, b"through the balancer\n");
    assert!(captured_log().contains("198.51.100.20:41000: connected through 127.0.0.2"));

    let mut direct = connect_from("127.0.0.3", server.addr);
    assert_echo(&mut direct, b"a direct client, no header\n");

    let mut spoofer = connect_from("127.0.0.3", server.addr);
    let claimed = b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 4040\r\nhello\n".to_vec();
    assert_echo(&mut spoofer, &claimed);
    let mut v2 = header_naming([203, 0, 113, 10], 5556);
    v2.extend_from_slice(b"\n");
    assert_echo(&mut spoofer, &v2);
    assert!(!captured_log().contains("203.0.113.9"));
    assert!(!captured_log().contains("203.0.113.10"));

    // A balancer's connection without a header is refused, as with --proxy-protocol.
    let mut headerless = connect_from("127.0.0.2", server.addr);
    assert_refused(&mut headerless, b"no header from the balancer\n");
}

/// The spoofing case: with `--proxy-from`, a direct client's claims of other addresses are
/// data, so the per-address limit counts its own address and holds.
#[test]
fn a_direct_client_cannot_dodge_the_per_address_limit_with_headers() {
    let server = start(Config {
        proxy_from: blocks(&["127.0.0.2"]),
        max_connections_per_ip: Some(2),
        ..Config::default()
    });
    let mut held = Vec::new();
    for n in 0..2u8 {
        let mut spoofer = connect_from("127.0.0.4", server.addr);
        let mut claim = header_naming([203, 0, 113, n], 6000);
        claim.push(b'\n');
        assert_echo(&mut spoofer, &claim);
        held.push(spoofer);
    }
    let mut third = connect_from("127.0.0.4", server.addr);
    let mut claim = header_naming([203, 0, 113, 3], 6000);
    claim.push(b'\n');
    assert_refused(&mut third, &claim);
    // Through the balancer, the limit counts the clients its headers name.
    for n in 0..2u8 {
        let mut proxied = connect_from("127.0.0.2", server.addr);
        let mut first = header_naming([198, 51, 100, n], 7000);
        first.extend_from_slice(b"proxied\n");
        proxied.write_all(&first).unwrap();
        let mut back = [0u8; 8];
        proxied.read_exact(&mut back).unwrap();
        held.push(proxied);
    }
}

/// After a trusted header, the lists apply to the client it names; before it, the
/// balancer's own address must pass them, so its health checks (`LOCAL`) are served.
#[test]
fn the_lists_apply_to_the_client_a_trusted_header_names() {
    let server = start(Config {
        proxy_from: blocks(&["127.0.0.2"]),
        allow: blocks(&["127.0.0.2", "198.51.100.0/24"]),
        deny: blocks(&["198.51.100.66"]),
        ..Config::default()
    });
    let mut allowed = connect_from("127.0.0.2", server.addr);
    let mut first = header_naming([198, 51, 100, 5], 8000);
    first.extend_from_slice(b"allowed client\n");
    allowed.write_all(&first).unwrap();
    let mut back = vec![0u8; b"allowed client\n".len()];
    allowed.read_exact(&mut back).unwrap();

    let mut denied = connect_from("127.0.0.2", server.addr);
    let mut first = header_naming([198, 51, 100, 66], 8001);
    first.extend_from_slice(b"denied client\n");
    assert_refused(&mut denied, &first);

    let mut outside = connect_from("127.0.0.2", server.addr);
    let mut first = header_naming([192, 0, 2, 1], 8002);
    first.extend_from_slice(b"not on the allow list\n");
    assert_refused(&mut outside, &first);

    let mut health_check = connect_from("127.0.0.2", server.addr);
    let mut local = Builder::new(Version::Two | Command::Local, 0)
        .build()
        .unwrap();
    local.extend_from_slice(b"health check\n");
    health_check.write_all(&local).unwrap();
    let mut back = vec![0u8; b"health check\n".len()];
    health_check.read_exact(&mut back).unwrap();
    assert_eq!(back, b"health check\n");

    assert_eq!(closed_for_access(&server), 2.0);
    assert!(captured_log().contains("198.51.100.66:8001: refused by --allow/--deny"));
}

#[test]
fn proxy_protocol_alone_warns_that_anyone_can_claim_any_address() {
    let _server = start(Config {
        proxy_protocol: true,
        ..Config::default()
    });
    let warnings = captured_log().at(log::Level::Warn);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("--proxy-protocol") && w.contains("--proxy-from")),
        "{warnings:?}"
    );
}

#[test]
fn bad_blocks_are_one_line_errors_naming_the_value() {
    for (option, value) in [
        ("--allow", "10.0.0.0/33"),
        ("--deny", "2001:db8::/129"),
        ("--proxy-from", "nonsense"),
        ("--allow", "10.0.0.0/"),
        ("--deny", "300.1.2.3"),
    ] {
        let output = common::binary()
            .args(["--port", "0", option, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{option} {value}: {stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.contains(value) && first.contains(option),
            "{option} {value}: {stderr}"
        );
        assert!(stderr.trim().lines().count() <= 3, "{stderr}");
    }
}
