//! kv_server behind Debian's HAProxy: PROXY protocol v2 with `tcp-check` health checks, 200
//! clients from their own addresses, health checks without the PROXY protocol, and a
//! rolling restart of the instances under load. Each needs haproxy and is `#[ignore]`d
//! with that reason: `cargo test -- --include-ignored` (CI) runs them.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::churn::Churn;
use common::crowd::{connect_from, source_address};
use common::{assert_echo, ServerProcess};

fn require_haproxy() {
    common::require_tool("haproxy", "haproxy");
}

/// HAProxy in the foreground with deploy/haproxy.cfg's settings, its frontend on a free
/// port, its two servers at `servers`, checks every 100 ms, a stats socket to ask.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    frontend: SocketAddr,
}

impl Haproxy {
    /// With `tls_ca`, HAProxy re-encrypts: it speaks TLS to the servers (and checks them over
    /// TLS), verifying their certificates against that CA file.
    fn start(servers: [SocketAddr; 2], proxy_protocol: bool, tls_ca: Option<&Path>) -> Haproxy {
        let dir = std::env::temp_dir().join(format!(
            "kv-haproxy-{}-{}",
            std::process::id(),
            servers[0].port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let frontend = free_port();
        let example = std::fs::read_to_string("deploy/haproxy.cfg").unwrap();
        let mut config = String::new();
        for line in example.lines() {
            let line = match line.trim_start() {
                l if l.starts_with("bind ") => format!("    bind {frontend}"),
                l if l.starts_with("server kv1") => format!("    server kv1 {}", servers[0]),
                l if l.starts_with("server kv2") => format!("    server kv2 {}", servers[1]),
                l if l.starts_with("default-server") => {
                    let proxy = if proxy_protocol {
                        "send-proxy-v2 check-send-proxy "
                    } else {
                        ""
                    };
                    let tls = tls_ca
                        .map(|ca| {
                            format!("ssl verify required ca-file {} check-ssl ", ca.display())
                        })
                        .unwrap_or_default();
                    format!("    default-server {proxy}{tls}check inter 100ms fall 1 rise 1")
                }
                l if l.starts_with("log stderr") => {
                    "    log stderr format raw local0 err".to_owned()
                }
                _ => line.to_owned(),
            };
            config.push_str(&line);
            config.push('\n');
            if line == "global" {
                let socket = dir.join("stats.sock");
                config.push_str(&format!(
                    "    stats socket {} mode 600 level admin\n",
                    socket.display()
                ));
            }
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its notices of servers going DOWN and UP are expected here; the stats socket
            // is what the tests read.
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let haproxy = Haproxy {
            child,
            dir,
            frontend,
        };
        haproxy.wait_until_up(&["kv1", "kv2"]);
        haproxy
    }

    /// `show stat` on the stats socket: (server name, status, last check) per server.
    fn servers(&self) -> Option<Vec<(String, String, String)>> {
        let mut socket = UnixStream::connect(self.dir.join("stats.sock")).ok()?;
        socket.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        socket.read_to_string(&mut csv).ok()?;
        Some(
            csv.lines()
                .filter(|line| line.starts_with("kv_servers,kv"))
                .map(|line| {
                    let fields: Vec<&str> = line.split(',').collect();
                    (
                        fields[1].to_owned(),
                        fields[17].to_owned(),
                        fields[36].to_owned(),
                    )
                })
                .collect(),
        )
    }

    /// Waits until HAProxy's health checks mark every one of `names` UP with a passed
    /// layer-7 check (the echo came back).
    fn wait_until_up(&self, names: &[&str]) {
        let deadline = Instant::now() + common::TIMEOUT;
        loop {
            let servers = self.servers().unwrap_or_default();
            let up = names.iter().all(|name| {
                servers
                    .iter()
                    .any(|(n, status, check)| n == name && status == "UP" && check == "L7OK")
            });
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "not UP in time: {servers:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The options of deploy/kv_server@.service's `ExecStart`, as written, for the instance on
/// `port` (`%i`).
fn unit_options(port: u16) -> Vec<String> {
    let unit = std::fs::read_to_string("deploy/kv_server@.service").unwrap();
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit's ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/kv_server"));
    words
        .map(|word| word.replace("%i", &port.to_string()))
        .collect()
}

/// An instance behind HAProxy; `proxy`: started as deploy/kv_server@.service starts it
/// (which believes the PROXY headers of HAProxy's connections, from 127.0.0.1), else
/// plain. Logging at debug, to see each client's address.
fn instance(port: u16, proxy: bool) -> ServerProcess {
    let mut options = if proxy {
        unit_options(port)
    } else {
        vec!["--port".to_owned(), port.to_string()]
    };
    options.extend(["--log-level".to_owned(), "debug".to_owned()]);
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    ServerProcess::start(&options)
}

/// The client addresses an instance's log names as connected through the balancer, until
/// `until` of them are counted across `instances`.
fn clients_logged(instances: &[&ServerProcess], until: usize) -> Vec<HashSet<IpAddr>> {
    let mut seen: Vec<HashSet<IpAddr>> = vec![HashSet::new(); instances.len()];
    let deadline = Instant::now() + common::TIMEOUT;
    while seen.iter().map(HashSet::len).sum::<usize>() < until {
        assert!(Instant::now() < deadline, "only {seen:?} in the logs");
        for (index, server) in instances.iter().enumerate() {
            while let Ok(line) = server.log.recv_timeout(Duration::from_millis(10)) {
                if let Some((addr, _)) = line.split_once(": connected through ") {
                    let addr = addr.rsplit(' ').next().unwrap();
                    seen[index].insert(addr.parse::<SocketAddr>().unwrap().ip());
                }
            }
        }
    }
    seen
}

#[test]
#[ignore = "needs haproxy (apt-get install haproxy); cargo test -- --include-ignored"]
fn through_haproxy_with_proxy_v2_every_client_is_served_under_its_own_address() {
    require_haproxy();
    let (kv1, kv2) = (instance(0, true), instance(0, true));
    let haproxy = Haproxy::start([kv1.addr(), kv2.addr()], true, None);
    std::thread::scope(|scope| {
        for n in 0..200 {
            let frontend = haproxy.frontend;
            scope.spawn(move || {
                let mut client = connect_from(source_address(n), frontend, false);
                client.set_read_timeout(Some(common::TIMEOUT)).unwrap();
                for line in 0..10 {
                    assert_echo(
                        &mut client,
                        format!("client {n} line {line}\r\n").as_bytes(),
                    );
                }
            });
        }
    });
    let seen = clients_logged(&[&kv1, &kv2], 200);
    let expected: HashSet<IpAddr> = (0..200).map(source_address).collect();
    assert_eq!(
        &seen[0] | &seen[1],
        expected,
        "the logs name every client's own address"
    );
    assert!(
        !seen[0].is_empty() && !seen[1].is_empty(),
        "both instances served some"
    );
    haproxy.wait_until_up(&["kv1", "kv2"]);
    // The same port serves a direct client, from another address, as who it is.
    let mut direct = connect_from(source_address(5_000), kv1.addr(), false);
    direct.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    assert_echo(&mut direct, b"straight to the instance, no header\n");
}

#[test]
#[ignore = "needs haproxy (apt-get install haproxy); cargo test -- --include-ignored"]
fn haproxy_re_encrypting_with_proxy_v2_and_tls_checks_serves_every_client_as_itself() {
    require_haproxy();
    let pki = common::tls::Pki::new("haproxy");
    let files = pki.write_server(1);
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let tls_instance = || {
        ServerProcess::start(&[
            "--log-level",
            "debug",
            "--proxy-from",
            "127.0.0.1",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ])
    };
    let (kv1, kv2) = (tls_instance(), tls_instance());
    // Up means its tcp-check went through: PROXY header, TLS handshake, echo.
    let haproxy = Haproxy::start([kv1.addr(), kv2.addr()], true, Some(&pki.ca_file()));
    std::thread::scope(|scope| {
        for n in 0..50 {
            let frontend = haproxy.frontend;
            scope.spawn(move || {
                let mut client = connect_from(source_address(n), frontend, false);
                client.set_read_timeout(Some(common::TIMEOUT)).unwrap();
                assert_echo(&mut client, format!("client {n} over TLS\n").as_bytes());
            });
        }
    });
    let seen = clients_logged(&[&kv1, &kv2], 50);
    let expected: HashSet<IpAddr> = (0..50).map(source_address).collect();
    assert_eq!(&seen[0] | &seen[1], expected);
    haproxy.wait_until_up(&["kv1", "kv2"]);
}

#[test]
#[ignore = "needs haproxy (apt-get install haproxy); cargo test -- --include-ignored"]
fn tcp_check_works_without_the_proxy_protocol_too() {
    require_haproxy();
    let (kv1, kv2) = (instance(0, false), instance(0, false));
    let haproxy = Haproxy::start([kv1.addr(), kv2.addr()], false, None);
    let mut client = common::connect(haproxy.frontend);
    assert_echo(&mut client, b"plain\n");
}

#[test]
#[ignore = "needs haproxy (apt-get install haproxy); cargo test -- --include-ignored"]
fn a_rolling_restart_through_haproxy_loses_no_line() {
    require_haproxy();
    let mut instances = [instance(0, true), instance(0, true)];
    let ports = [instances[0].port, instances[1].port];
    let haproxy = Haproxy::start([instances[0].addr(), instances[1].addr()], true, None);
    let churn = Churn::start(haproxy.frontend, 8, 20);
    for round in 0..2 {
        for which in 0..2 {
            churn.wait_for_echoes(200);
            // One instance drains and comes back while the other serves.
            instances[which].signal(libc::SIGTERM);
            assert!(
                instances[which]
                    .wait_exit(Duration::from_secs(10))
                    .success(),
                "round {round}"
            );
            instances[which] = instance(ports[which], true);
            haproxy.wait_until_up(&["kv1", "kv2"]);
        }
    }
    churn.wait_for_echoes(200);
    let tally = churn.stop();
    println!("4 rolling restarts through HAProxy: {tally:?}");
    assert_eq!(tally.lost, 0, "{tally:?}");
    assert_eq!(tally.resets, 0, "{tally:?}");
}

/// The example configuration as shipped passes HAProxy's own check.
#[test]
#[ignore = "needs haproxy (apt-get install haproxy); cargo test -- --include-ignored"]
fn the_example_configuration_is_valid() {
    require_haproxy();
    let output = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(Path::new("deploy/haproxy.cfg"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
