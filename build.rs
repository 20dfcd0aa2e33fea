//! Names the commit the binary is built from, for `--version`: `git describe`'s view of
//! the work tree (the commit's short hash, `-dirty` with uncommitted changes), or
//! "unknown" where there is no git (a source archive).

fn main() {
    let commit = std::process::Command::new("git")
        .args([
            "describe",
            "--always",
            "--dirty",
            "--abbrev=12",
            "--exclude=*",
        ])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KV_SERVER_COMMIT={commit}");
    // A new commit names another build (a later edit alone does not rebuild for this).
    for path in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
