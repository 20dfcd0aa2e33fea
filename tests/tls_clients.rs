//! TLS with the tools people test TLS endpoints with: certificates and keys made by
//! Debian's openssl (RSA in PKCS#8 and PKCS#1, ECDSA in SEC1, Ed25519; a chain through an
//! intermediate), `openssl s_client` over TLS 1.2 and 1.3, and socat's OPENSSL client.
//! Each needs openssl (or socat) and is `#[ignore]`d with the reason: `cargo test --
//! --include-ignored` (CI) runs them.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use common::{TestServer, TIMEOUT};
use kv_server::{Config, Echo, TlsFiles};

/// What every client sends: CR LF and LF line ends, a tab, UTF-8, and 0xFF.
const LINES: &[u8] = b"hello over TLS\r\ncaf\xC3\xA9 \xE2\x9C\x93\ttab\n\xFF\xFE binary\n";

/// A directory of openssl-made files, removed at the end.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir =
            std::env::temp_dir().join(format!("kv_tls_openssl_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// An ECDSA P-256 key in `name` (PKCS#8).
    fn ec_key(&self, name: &str) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ]);
    }

    /// A certificate `NAME.pem` for `key`, with `subject` and `extensions`, signed by the
    /// CA `issuer` (`ISSUER.pem`, `ISSUER.key`).
    fn sign(&self, name: &str, key: &str, subject: &str, extensions: &str, issuer: &str) {
        let (csr, ext, pem) = (
            format!("{name}.csr"),
            format!("{name}.ext"),
            format!("{name}.pem"),
        );
        self.openssl(&["req", "-new", "-key", key, "-subj", subject, "-out", &csr]);
        std::fs::write(self.path(&ext), extensions).unwrap();
        let (issuer_cert, issuer_key) = (format!("{issuer}.pem"), format!("{issuer}.key"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &issuer_cert,
            "-CAkey",
            &issuer_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
    }

    /// A root CA, and an intermediate it signed (ca.pem, intermediate.pem).
    fn authorities(&self) {
        self.ec_key("ca.key");
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=kv test root",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca.pem",
        ]);
        self.ec_key("intermediate.key");
        self.sign(
            "intermediate",
            "intermediate.key",
            "/CN=kv test intermediate",
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
            "ca",
        );
    }

    /// A server key of `kind` and a certificate for 127.0.0.1 and localhost signed by the
    /// intermediate; the certificate file holds the chain (leaf, then intermediate).
    fn server(&self, kind: &str) -> TlsFiles {
        let key = format!("{kind}.key");
        let rsa = [
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ];
        match kind {
            "rsa-pkcs8" => self.openssl(&[&rsa[..], &[key.as_str()]].concat()),
            "rsa-pkcs1" => {
                self.openssl(&[&rsa[..], &["rsa.tmp"]].concat());
                self.openssl(&["rsa", "-in", "rsa.tmp", "-traditional", "-out", &key]);
            }
            "ecdsa-sec1" => self.openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ]),
            "ed25519" => self.openssl(&["genpkey", "-algorithm", "ED25519", "-out", &key]),
            other => panic!("unknown key kind {other}"),
        }
        let leaf = format!("{kind}.leaf");
        self.sign(
            &leaf,
            &key,
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            "intermediate",
        );
        let mut chain = std::fs::read(self.path(&format!("{leaf}.pem"))).unwrap();
        chain.extend(std::fs::read(self.path("intermediate.pem")).unwrap());
        let cert = format!("{kind}.chain.pem");
        std::fs::write(self.path(&cert), chain).unwrap();
        TlsFiles {
            cert: self.path(&cert),
            key: self.path(&key),
            client_ca: None,
            ocsp: None,
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a client that takes its input on stdin and prints the echo on stdout: sends
/// `LINES`, waits for as many bytes back, then ends its input. Returns the echo.
fn round_trip(command: &mut Command) -> Vec<u8> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut echo = vec![0; LINES.len()];
        let read = stdout.read_exact(&mut echo).map(|()| echo);
        let _ = tx.send(read);
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(LINES).unwrap();
    stdin.flush().unwrap();
    let echo = rx.recv_timeout(TIMEOUT);
    drop(stdin);
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    match echo {
        Ok(Ok(echo)) => echo,
        other => panic!(
            "{command:?}: no echo ({other:?}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn s_client(addr: std::net::SocketAddr, ca: &Path, version: &str) -> Command {
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-verify_return_error",
            version,
        ])
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_hostname", "localhost"]);
    command
}

#[test]
#[ignore = "needs openssl (apt-get install openssl); cargo test -- --include-ignored"]
fn openssl_s_client_echoes_byte_exact_with_every_key_kind_over_tls_1_2_and_1_3() {
    common::require_tool("openssl", "openssl");
    let files = Files::new("s_client");
    files.authorities();
    for kind in ["ecdsa-sec1", "rsa-pkcs8", "rsa-pkcs1", "ed25519"] {
        let config = Config {
            tls: Some(files.server(kind)),
            ..Config::default()
        };
        let server = TestServer::start_with(config, Box::new(Echo));
        for version in ["-tls1_3", "-tls1_2"] {
            let echo = round_trip(&mut s_client(server.addr, &files.path("ca.pem"), version));
            assert_eq!(echo, LINES, "{kind} {version}");
        }
    }
}

#[test]
#[ignore = "needs openssl and socat (apt-get install openssl socat); cargo test -- --include-ignored"]
fn socat_openssl_client_echoes_byte_exact() {
    common::require_tool("openssl", "openssl");
    common::require_tool("socat", "socat");
    let files = Files::new("socat");
    files.authorities();
    let config = Config {
        tls: Some(files.server("ecdsa-sec1")),
        ..Config::default()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let ca = files.path("ca.pem");
    let echo = round_trip(Command::new("socat").arg("-").arg(format!(
        "OPENSSL:127.0.0.1:{},cafile={},commonname=localhost",
        server.addr.port(),
        ca.display()
    )));
    assert_eq!(echo, LINES);
}

#[test]
#[ignore = "needs openssl (apt-get install openssl); cargo test -- --include-ignored"]
fn openssl_s_client_with_a_client_certificate_is_served_and_without_one_refused() {
    common::require_tool("openssl", "openssl");
    let files = Files::new("mtls");
    files.authorities();
    let mut tls = files.server("ecdsa-sec1");
    tls.client_ca = Some(files.path("ca.pem"));
    // A client certificate signed by the root.
    files.ec_key("client.key");
    files.sign(
        "client",
        "client.key",
        "/CN=kv test client",
        "extendedKeyUsage=clientAuth\n",
        "ca",
    );
    let config = Config {
        tls: Some(tls),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    };
    let server = TestServer::start_with(config, Box::new(Echo));
    let mut certified = s_client(server.addr, &files.path("ca.pem"), "-tls1_3");
    certified
        .arg("-cert")
        .arg(files.path("client.pem"))
        .arg("-key")
        .arg(files.path("client.key"));
    assert_eq!(round_trip(&mut certified), LINES);

    let output = s_client(server.addr, &files.path("ca.pem"), "-tls1_3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"let me in\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!output.stdout.windows(9).any(|w| w == b"let me in"));
    // s_client reports the alert, or, when its write lost the race with the close, the
    // write's failure: the server's count says which refusal it was.
    let metrics = common::scrape(server.metrics.unwrap());
    assert_eq!(
        metrics["kv_server_tls_handshake_failures_total{reason=\"no_client_certificate\"}"],
        1.0,
        "s_client said: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The certificates the README's commands make (a CA, a server certificate, a client
/// certificate), run as written in a fresh directory: the binary serves TLS with them,
/// mutual TLS included, and `openssl s_client` as the README shows it echoes byte-exact.
#[test]
#[ignore = "needs openssl (apt-get install openssl); cargo test -- --include-ignored"]
fn the_readme_certificate_commands_make_certificates_the_server_takes() {
    common::require_tool("openssl", "openssl");
    let commands = common::doc_block("README.md", "sh", "openssl req -x509");
    let files = Files::new("readme");
    let made = Command::new("sh")
        .args(["-eu", "-c", &commands])
        .current_dir(&files.dir)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "the README's commands: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let path = |name: &str| files.path(name).to_string_lossy().into_owned();
    let server = common::ServerProcess::start(&[
        "--tls-cert",
        &path("server.pem"),
        "--tls-key",
        &path("server.key"),
        "--tls-client-ca",
        &path("ca.pem"),
    ]);
    let mut client = Command::new("openssl");
    client
        .args(["s_client", "-quiet", "-no_ign_eof", "-verify_return_error"])
        .args(["-connect", &server.addr().to_string()])
        .args(["-CAfile", &path("ca.pem")])
        .args(["-cert", &path("client.pem"), "-key", &path("client.key")]);
    assert_eq!(round_trip(&mut client), LINES);
}

/// A version 1 client certificate, what `openssl x509 -req` makes without extensions, is
/// refused (rustls takes only version 3), and the log names it and says how to reissue it.
#[test]
#[ignore = "needs openssl (apt-get install openssl); cargo test -- --include-ignored"]
fn a_version_1_client_certificate_is_refused_with_a_hint_in_the_log() {
    common::require_tool("openssl", "openssl");
    let files = Files::new("v1");
    files.authorities();
    let tls = files.server("ecdsa-sec1");
    files.ec_key("old.key");
    files.openssl(&[
        "req",
        "-new",
        "-key",
        "old.key",
        "-subj",
        "/CN=legacy device/O=Example",
        "-out",
        "old.csr",
    ]);
    files.openssl(&[
        "x509",
        "-req",
        "-in",
        "old.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "old.pem",
    ]);
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(files.path("old.pem"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"));
    let server = common::ServerProcess::start(&[
        "--tls-cert",
        tls.cert.to_str().unwrap(),
        "--tls-key",
        tls.key.to_str().unwrap(),
        "--tls-client-ca",
        files.path("ca.pem").to_str().unwrap(),
    ]);
    let mut client = s_client(server.addr(), &files.path("ca.pem"), "-tls1_3");
    client
        .arg("-cert")
        .arg(files.path("old.pem"))
        .arg("-key")
        .arg(files.path("old.key"));
    let output = client
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"hello\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!output.stdout.windows(5).any(|w| w == b"hello"));
    let hint = server.wait_log("X.509 version 1");
    assert!(hint.contains("CN=legacy device, O=Example"), "{hint}");
    assert!(hint.contains("-extfile"), "{hint}");
}

/// `--tls-self-signed` logs the SHA-256 fingerprint of the certificate it made, and that is
/// the fingerprint of the certificate `openssl s_client` is shown.
#[test]
#[ignore = "needs openssl (apt-get install openssl); cargo test -- --include-ignored"]
fn the_self_signed_fingerprint_logged_is_what_openssl_s_client_sees() {
    common::require_tool("openssl", "openssl");
    let server = common::ServerProcess::start(&["--tls-self-signed"]);
    let line = server.log_line("fingerprint");
    assert!(line.contains("localhost, 127.0.0.1"), "{line}");
    let logged = line.rsplit(' ').next().unwrap().to_owned();
    let shown = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256",
            server.port
        ))
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert_eq!(
        shown.trim(),
        format!("sha256 Fingerprint={logged}"),
        "{line}"
    );
}
