//! The judge of `--kv` from outside: the Elixir guide's own ExUnit tests for its KV server
//! (tests/guide/kv_server_test.exs), run by real Elixir against the built binary.

mod common;

use std::process::Command;

use common::ServerProcess;

#[test]
#[ignore = "needs elixir (apt-get install elixir); cargo test -- --include-ignored"]
fn the_guides_exunit_tests_pass_against_the_binary() {
    common::require_tool("elixir", "elixir");
    let mut server = ServerProcess::start(&["--kv"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/guide/kv_server_test.exs"
    );
    let output = Command::new("elixir")
        .arg(script)
        .env("KV_PORT", server.port.to_string())
        .output()
        .expect("run elixir");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("5 tests, 0 failures"), "{report}");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(common::TIMEOUT).success());
}

/// The same tests fail against the plain echo: they judge the store, not the connection.
#[test]
#[ignore = "needs elixir (apt-get install elixir); cargo test -- --include-ignored"]
fn the_guides_tests_fail_against_the_echo() {
    common::require_tool("elixir", "elixir");
    let mut server = ServerProcess::start(&[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/guide/kv_server_test.exs"
    );
    let output = Command::new("elixir")
        .arg(script)
        .env("KV_PORT", server.port.to_string())
        .output()
        .expect("run elixir");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("5 tests, 5 failures"));
    server.signal(libc::SIGTERM);
    server.wait_exit(common::TIMEOUT);
}
