//! What a person reads is what the program does: every `console` block in the README and
//! in docs/ is run against the built binary by trycmd (clap's and cargo's own tool for
//! this), and its output must match, byte for byte but for `...` and `[..]` where the text
//! says they stand for what varies.

#[test]
fn the_documentation_shows_what_the_program_does() {
    trycmd::TestCases::new()
        .register_bin("kv_server", trycmd::cargo::cargo_bin!("kv_server"))
        .case("README.md")
        .case("docs/*.md");
}
