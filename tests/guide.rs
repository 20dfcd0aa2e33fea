//! The judge of `--kv` from outside: the Elixir guide's own ExUnit tests for its KV server
//! (tests/guide/kv_server_test.exs), run by real Elixir against the built binary.

mod common;

use std::process::Command;

use common::ServerProcess;

/// Runs the guide's tests against a server started with `args`; returns their report and
/// whether they all passed.
fn guide_tests_against(args: &[&str]) -> (String, bool) {
    common::require_tool("elixir", "elixir");
    let mut server = ServerProcess::start(args);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/guide/kv_server_test.exs"
    );
    let output = Command::new("elixir")
        .arg(script)
        .env("KV_PORT", server.port.to_string())
        .output()
        .expect("run elixir");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(common::TIMEOUT).success());
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (report, output.status.success())
}

#[test]
#[ignore = "needs elixir (apt-get install elixir); cargo test -- --include-ignored"]
fn the_guides_exunit_tests_pass_against_the_binary() {
    let (report, passed) = guide_tests_against(&["--kv"]);
    assert!(passed, "{report}");
    assert!(report.contains("5 tests, 0 failures"), "{report}");
}

/// The same tests fail against the plain echo: they judge the store, not the connection.
#[test]
#[ignore = "needs elixir (apt-get install elixir); cargo test -- --include-ignored"]
fn the_guides_tests_fail_against_the_echo() {
    let (report, passed) = guide_tests_against(&[]);
    assert!(!passed, "{report}");
    assert!(report.contains("5 tests, 5 failures"), "{report}");
}
