//! Runs a tokio baseline echo server as its own process, for load-generator runs side by
//! side with kv_server (see docs/performance.md):
//!
//! ```sh
//! cargo bench --bench baseline_server -- raw 4041
//! cargo bench --bench baseline_server -- line 4042
//! cargo bench --bench baseline_server -- udp 4043
//! cargo bench --bench baseline_server -- tls 4044 cert.pem key.pem
//! cargo bench --bench baseline_server -- websocket 4045
//! ```
//!
//! A plain `cargo bench` runs every bench target; without a mode this one returns at once.

mod baselines;

use std::net::SocketAddr;

use baselines::Baseline;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let baseline = match args.first().map(String::as_str) {
        Some("raw") => Baseline::Raw,
        Some("line") => Baseline::Line,
        Some("udp") => Baseline::Udp,
        Some("tls") => Baseline::Tls,
        Some("websocket") => Baseline::WebSocket,
        None => return,
        Some(other) => {
            eprintln!("baseline_server: unknown mode '{other}': expected raw, line, udp, tls or websocket");
            std::process::exit(2);
        }
    };
    let port: u16 = match args.get(1).map(|p| p.parse()) {
        Some(Ok(port)) => port,
        None => 0,
        Some(Err(_)) => {
            eprintln!("baseline_server: invalid port '{}'", args[1]);
            std::process::exit(2);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tls = match (baseline, args.get(2), args.get(3)) {
        (Baseline::Tls, Some(cert), Some(key)) => Some((cert.into(), key.into())),
        (Baseline::Tls, _, _) => {
            eprintln!("baseline_server: tls needs a certificate and a key file after the port");
            std::process::exit(2);
        }
        _ => None,
    };
    baselines::serve(baseline, addr, tls, |bound| {
        eprintln!("{} listening on {bound}", baseline.name());
    });
}
