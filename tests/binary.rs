//! The built `kv_server` binary run as a process: start-up, its log line, its options and
//! its errors, as a user meets them.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{assert_echo, binary, kv_load, ServerProcess};

#[test]
fn port_environment_variable_is_honoured_and_logged() {
    let free_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = binary();
    command
        .args(["--bind", "127.0.0.1"])
        .env("PORT", free_port.to_string());
    let server = ServerProcess::spawn(command);
    assert_eq!(server.port, free_port);
    let mut client = common::connect(server.addr());
    assert_echo(&mut client, b"hello from the binary\r\n");
}

#[test]
fn port_zero_logs_the_real_port() {
    let server = ServerProcess::start(&["--port", "0"]);
    assert_ne!(server.port, 0);
    let mut client = common::connect(server.addr());
    assert_echo(&mut client, b"port zero\n");
}

#[test]
fn port_flag_wins_over_the_environment() {
    let mut command = binary();
    command
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .env("PORT", "not a port");
    let server = ServerProcess::spawn(command);
    assert_ne!(server.port, 0);
}

#[test]
fn ipv6_bind_address_works() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; nothing to test");
        return;
    }
    let mut command = binary();
    command.args(["--bind", "::1", "--port", "0"]);
    let server = ServerProcess::spawn(command);
    let addr = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, server.port));
    let mut client = common::connect(addr);
    assert_echo(&mut client, b"over ipv6\n");
}

#[test]
fn help_and_version_describe_the_program() {
    let help = binary().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for option in [
        "--port",
        "--bind",
        "--log-level",
        "--max-line-bytes",
        "--max-connections",
        "--idle-timeout",
        "--shutdown-timeout",
        "PORT",
    ] {
        assert!(text.contains(option), "--help mentions {option}:\n{text}");
    }
    // Options are grouped under headings, in this order, each option under its own.
    let headings = [
        "Listening:",
        "Limits:",
        "Access:",
        "Protocols:",
        "Observability:",
    ];
    let at: Vec<usize> = headings
        .iter()
        .map(|h| {
            text.find(h)
                .unwrap_or_else(|| panic!("--help has {h}:\n{text}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    let under = |option: &str| {
        // The option's own entry, not a mention of it in the description above.
        let entry = text.find(&format!("\n      {option}")).unwrap();
        headings[at.iter().rposition(|&h| h < entry).unwrap()]
    };
    assert_eq!(under("--bind"), "Listening:");
    assert_eq!(under("--max-buffered-bytes"), "Limits:");
    assert_eq!(under("--deny"), "Access:");
    assert_eq!(under("--telnet"), "Protocols:");
    assert_eq!(under("--metrics"), "Observability:");
    let version = binary().arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8(version.stdout)
        .unwrap()
        .contains(env!("CARGO_PKG_VERSION")));
}

/// Runs the binary expecting it to refuse to start with exit status `status` (2 for a
/// malformed command line, 1 for the rest); returns its stderr, which must be one line,
/// "kv_server: error: ...".
fn refuses_with(status: i32, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = binary();
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        output.status.code(),
        Some(status),
        "{args:?} must fail with status {status}; stderr: {stderr}"
    );
    assert!(
        stderr.starts_with("kv_server: error: ") && stderr.trim_end().lines().count() == 1,
        "one line, kv_server: error: ...: {stderr:?}"
    );
    stderr
}

/// A start-up error that is not the command line's: status 1.
fn refuses(args: &[&str], env: &[(&str, &str)]) -> String {
    refuses_with(1, args, env)
}

/// A malformed command line: status 2.
fn refuses_usage(args: &[&str]) -> String {
    refuses_with(2, args, &[])
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let stderr = refuses(&["--bind", "127.0.0.1", "--port", &port], &[]);
    assert!(stderr.contains(&port), "names the port: {stderr}");
    assert!(stderr.contains("in use"), "says why: {stderr}");
}

#[test]
fn bad_port_environment_is_a_clear_error() {
    let stderr = refuses(&[], &[("PORT", "forty")]);
    assert!(
        stderr.contains("PORT") && stderr.contains("'forty'"),
        "{stderr}"
    );
    let stderr = refuses(&[], &[("PORT", "65536")]);
    assert!(stderr.contains("'65536'"), "{stderr}");
}

#[test]
fn bad_flags_are_clear_errors() {
    let stderr = refuses_usage(&["--port", "70000"]);
    assert!(stderr.contains("'70000' for '--port"), "{stderr}");
    // A negative number is a bad value for the option, not an unknown flag.
    let stderr = refuses_usage(&["--port", "-1"]);
    assert!(stderr.contains("'-1' for '--port"), "{stderr}");
    let stderr = refuses_usage(&["--bind", "localhost.nowhere"]);
    assert!(
        stderr.contains("localhost.nowhere") && stderr.contains("IPv4 or IPv6 address"),
        "{stderr}"
    );
    let stderr = refuses_usage(&["--allow", "10.0.0.0/33"]);
    assert_eq!(
        stderr.trim_end(),
        "kv_server: error: invalid value '10.0.0.0/33' for '--allow <CIDR>': the prefix \
         length must be a number from 0 to 32"
    );
    let stderr = refuses_usage(&["--max-line-bytes", "0"]);
    assert!(stderr.contains("--max-line-bytes"), "{stderr}");
    // One connection's unfinished line and a read must fit in the budget.
    let stderr = refuses_usage(&[
        "--max-line-bytes",
        "1000000",
        "--max-buffered-bytes",
        "1000000",
    ]);
    assert!(
        stderr.contains("--max-buffered-bytes must be at least 1065536"),
        "{stderr}"
    );
    let stderr = refuses_usage(&["--log-level", "loud"]);
    assert!(
        stderr.contains("'loud'")
            && stderr.contains("[possible values: off, error, warn, info, debug, trace]"),
        "{stderr}"
    );
    let stderr = refuses_usage(&["--idle-timeout", "soon"]);
    assert!(stderr.contains("soon"), "{stderr}");
    let stderr = refuses_usage(&["--tls-cert", "server.pem"]);
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let stderr = refuses_usage(&["--prot", "4040"]);
    assert!(
        stderr.contains("'--prot'") && stderr.contains("'--port'"),
        "{stderr}"
    );
}

/// `--kv` goes with every stream transport but not with `--udp`; its budget needs it; with
/// `--reuse-port` it warns that buckets are per process.
#[test]
fn kv_options_are_checked_and_its_limits_said_at_start_up() {
    let stderr = refuses_usage(&["--kv", "--udp"]);
    assert!(
        stderr.contains("'--kv'") && stderr.contains("'--udp'"),
        "{stderr}"
    );
    let stderr = refuses_usage(&["--kv-max-bytes", "1000"]);
    assert!(stderr.contains("--kv"), "{stderr}");
    let stderr = refuses_usage(&["--kv", "--kv-max-bytes", "0"]);
    assert!(stderr.contains("'0' for '--kv-max-bytes"), "{stderr}");
    let server = ServerProcess::start(&["--kv", "--reuse-port", "--kv-max-bytes", "1000000"]);
    let said = server.startup_log.join("\n") + &server.wait_log("KV commands");
    assert!(
        said.contains("--kv with --reuse-port: each instance keeps its own buckets"),
        "{said}"
    );
    assert!(said.contains("up to 1000000 bytes"), "{said}");
}

/// `--bind localhost` listens on 127.0.0.1; a `PORT` set to nothing counts as unset.
#[test]
fn localhost_and_an_empty_port_variable_are_taken_as_people_mean_them() {
    let mut command = binary();
    command.args(["--bind", "localhost", "--port", "0"]);
    let server = ServerProcess::spawn(command);
    assert_echo(&mut common::connect(server.addr()), b"on localhost\n");
    let mut command = binary();
    command
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .env("PORT", "");
    let server = ServerProcess::spawn(command);
    assert_echo(&mut common::connect(server.addr()), b"PORT= is unset\n");
    let mut command = binary();
    command.args(["--bind", "127.0.0.1"]).env("PORT", "");
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // 4040, or an error naming it if something here holds that port: never PORT's ''.
    assert!(
        first.contains("port 4040") || first.contains(":4040"),
        "{first}"
    );
}

#[test]
fn log_level_flag_controls_what_is_logged() {
    let server = ServerProcess::start(&["--log-level", "debug"]);
    let mut client = common::connect(server.addr());
    assert_echo(&mut client, b"x\n");
    drop(client);
    let line = server.wait_log("connection closed");
    assert!(
        line.contains("DEBUG") && line.contains("127.0.0.1:"),
        "{line}"
    );
}

#[test]
fn rust_log_is_honoured_without_the_flag() {
    let mut command = binary();
    command
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .env("RUST_LOG", "debug");
    let server = ServerProcess::spawn(command);
    let client = common::connect(server.addr());
    drop(client);
    server.wait_log("connection closed");
}

#[test]
fn clients_leaving_are_logged_at_debug_only() {
    let mut server = ServerProcess::start(&["--log-level", "debug"]);
    let mut polite = common::connect(server.addr());
    assert_echo(&mut polite, b"bye\n");
    polite.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(common::read_to_end(&mut polite).unwrap(), b"");
    server.wait_log("connection closed");
    let mut rude = common::connect(server.addr());
    assert_echo(&mut rude, b"reset coming\n");
    common::reset(rude);
    server.wait_log("connection closed");
    let mut probe = common::connect(server.addr());
    assert_echo(&mut probe, b"still here\n");
    drop(probe);
    server.wait_log("connection closed");
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(10));
    let errors: Vec<String> = server
        .drain_log()
        .into_iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(errors.is_empty(), "nothing above debug: {errors:?}");
}

#[test]
fn restart_right_after_a_stop_binds_the_same_port() {
    let mut first = ServerProcess::start(&["--port", "0"]);
    let port = first.port.to_string();
    let mut client = common::connect(first.addr());
    assert_echo(&mut client, b"one\n");
    first.signal(libc::SIGTERM);
    // The server closes first, so its side of the connection sits in TIME_WAIT.
    assert_eq!(common::read_to_end(&mut client).unwrap(), b"");
    drop(client);
    assert!(first.wait_exit(Duration::from_secs(10)).success());
    let second = ServerProcess::start(&["--port", &port]);
    let mut client = common::connect(second.addr());
    assert_echo(&mut client, b"two\n");
}

#[test]
fn the_load_generator_describes_itself() {
    let output = kv_load().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.starts_with("Drives a line echo server and verifies every byte it echoes"),
        "{help}"
    );
}

#[test]
fn the_load_generator_checks_every_echoed_byte() {
    let server = ServerProcess::start(&[]);
    let addr = server.addr().to_string();
    let pid = server.pid().to_string();
    let output = kv_load()
        .args([
            "--addr", &addr, "-c", "20", "-l", "64", "-d", "4", "--lines", "200",
        ])
        .args(["--server-pid", &pid])
        .output()
        .unwrap();
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{report}");
    assert!(report.contains("lines 4000 |"), "{report}");
    assert!(report.contains("errors 0 "), "{report}");
    assert!(report.contains("server cpu:"), "{report}");
}

/// Answers every line with its bytes shifted by one: a server that echoes wrongly.
struct Corrupting;

impl kv_server::LineHandler for Corrupting {
    fn respond<'a>(&mut self, lines: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
        scratch.extend(
            lines
                .iter()
                .map(|&b| if b == b'\n' { b } else { b.wrapping_add(1) }),
        );
        scratch
    }
}

#[test]
fn the_load_generator_reports_a_wrong_echo_as_errors() {
    let server = common::TestServer::start_with(kv_server::Config::default(), Box::new(Corrupting));
    let addr = server.addr.to_string();
    let output = kv_load()
        .args([
            "--addr", &addr, "-c", "2", "-l", "32", "-d", "1", "--lines", "10",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(
        !output.status.success(),
        "a wrong echo fails the run: {report}"
    );
    assert!(report.contains("mismatched lines 20"), "{report}");
}

/// `--generate` prints what `--generate man|bash|zsh|fish` asks for, on stdout.
fn generated(kind: &str) -> String {
    let output = binary().args(["--generate", kind]).output().unwrap();
    assert!(output.status.success(), "--generate {kind}");
    String::from_utf8(output.stdout).unwrap()
}

/// The man page comes from the same definitions as `--help`: rendered by man, it shows
/// every option `--help` lists.
#[test]
#[ignore = "needs man (apt-get install man-db); cargo test -- --include-ignored"]
fn the_man_page_renders_every_option() {
    common::require_tool("man", "man-db");
    let page = std::env::temp_dir().join(format!("kv_server_{}.1", std::process::id()));
    std::fs::write(&page, generated("man")).unwrap();
    let rendered = std::process::Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&page);
    assert!(rendered.status.success());
    // In the C locale man writes ASCII hyphens, unbroken.
    let text = String::from_utf8_lossy(&rendered.stdout);
    let help = String::from_utf8(binary().arg("--help").output().unwrap().stdout).unwrap();
    let options: Vec<&str> = help
        .split_whitespace()
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| word.trim_end_matches([',', '.', ';']))
        .filter(|word| {
            word.chars()
                .skip(2)
                .all(|c| c.is_ascii_lowercase() || c == '-')
        })
        .collect();
    assert!(options.len() > 25, "{options:?}");
    for option in options {
        assert!(text.contains(option), "the man page lacks {option}");
    }
}

/// bash completes `--tl` to the TLS options; zsh and fish get their scripts too.
#[test]
fn shell_completions_complete_the_options() {
    let script = std::env::temp_dir().join(format!("kv_server_{}.bash", std::process::id()));
    std::fs::write(&script, generated("bash")).unwrap();
    let completed = std::process::Command::new("bash")
        .arg("-c")
        .arg(
            r#"source "$0"; COMP_LINE="kv_server --tl"; COMP_POINT=${#COMP_LINE};
               COMP_WORDS=(kv_server --tl); COMP_CWORD=1;
               _kv_server kv_server --tl kv_server; printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg(&script)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&script);
    let words = String::from_utf8(completed.stdout).unwrap();
    let words: Vec<&str> = words.lines().collect();
    assert_eq!(
        words,
        [
            "--tls-cert",
            "--tls-key",
            "--tls-client-ca",
            "--tls-ocsp",
            "--tls-self-signed",
            "--tls-name",
            "--tls-alpn",
            "--tls-handshake-timeout"
        ]
    );
    assert!(generated("zsh").contains("--tls-client-ca"));
    assert!(generated("fish").contains("tls-client-ca"));
}

/// Under systemd, stderr is the journal stream JOURNAL_STREAM names: lines go out without
/// a timestamp (journald adds its own) and with their syslog priority, `<6>` for info,
/// `<4>` for a warning. A JOURNAL_STREAM that names another file changes nothing.
#[test]
fn logs_speak_journald_when_stderr_is_the_journal() {
    use std::io::BufRead;
    use std::os::unix::fs::MetadataExt;
    let first_lines = |journal_stream: &dyn Fn(&std::fs::Metadata) -> String| {
        let (reader, writer) = std::io::pipe().unwrap();
        let pipe = std::fs::File::from(std::os::fd::OwnedFd::from(reader.try_clone().unwrap()));
        let named = journal_stream(&pipe.metadata().unwrap());
        let mut child = binary()
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--max-connections",
                "2",
            ])
            .args(["--max-connections-per-ip", "1", "--evict-idle-after", "0"])
            .env("JOURNAL_STREAM", named)
            .stderr(writer)
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(reader).lines();
        let accepting = lines.next().unwrap().unwrap();
        let port: u16 = accepting.rsplit(' ').next().unwrap().parse().unwrap();
        // Two from one address: the second is over the per-address limit, a warning.
        let held = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _over = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let warning = lines.next().unwrap().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        drop(held);
        (accepting, warning)
    };
    let (info, warning) = first_lines(&|pipe| format!("{}:{}", pipe.dev(), pipe.ino()));
    assert!(
        info.starts_with("<6>[kv_server::server] Accepting connections on port "),
        "{info}"
    );
    assert!(
        warning.starts_with("<4>[kv_server::accept")
            && warning.contains("--max-connections-per-ip"),
        "{warning}"
    );
    // Another file's device and inode: the usual format, timestamp first.
    let (info, _) = first_lines(&|pipe| format!("{}:{}", pipe.dev(), pipe.ino() + 1));
    assert!(
        info.starts_with("20") && info.contains(" INFO  [kv_server::server] Accepting"),
        "{info}"
    );
}
