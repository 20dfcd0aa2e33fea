//! The metric families of the key-value store (`--kv`): commands by kind and result, what
//! the buckets hold, and the fan-out to subscribers.

use super::exposition::Encoder;
use crate::counters::{KvCommand, KvCounts, KvOutcome};

/// The results each kind of command can have: the samples a scrape shows, zeros included,
/// so that a rate can be taken from the first scrape on.
fn outcomes(command: KvCommand) -> &'static [KvOutcome] {
    match command {
        KvCommand::Create | KvCommand::Subscribe | KvCommand::Put => {
            &[KvOutcome::Ok, KvOutcome::NotFound, KvOutcome::Error]
        }
        KvCommand::Get | KvCommand::Delete => &[KvOutcome::Ok, KvOutcome::NotFound],
        KvCommand::Unknown => &[KvOutcome::UnknownCommand],
        KvCommand::TooLong => &[KvOutcome::Error],
    }
}

pub(super) fn encode(e: &mut Encoder, kv: &KvCounts) {
    let commands: Vec<_> = KvCommand::ALL
        .iter()
        .flat_map(|&command| {
            outcomes(command).iter().map(move |&outcome| {
                (
                    (command.label(), outcome.label()),
                    kv.commands[command as usize][outcome as usize] as f64,
                )
            })
        })
        .collect();
    e.counter_by_two(
        "kv_server_kv_commands",
        "Commands answered (with --kv), by command and result: ok, not_found (no such \
         bucket), error (over --kv-max-bytes, or a line over --max-line-bytes: too_long), \
         unknown_command.",
        ("command", "result"),
        &commands,
    );
    e.gauge("kv_server_kv_buckets", "Buckets.", kv.buckets as f64);
    e.gauge("kv_server_kv_keys", "Keys in all buckets.", kv.keys as f64);
    e.gauge(
        "kv_server_kv_stored_bytes",
        "Bytes the buckets hold, as --kv-max-bytes counts them.",
        kv.bytes as f64,
    );
    e.gauge(
        "kv_server_kv_max_stored_bytes",
        "--kv-max-bytes.",
        kv.max_bytes as f64,
    );
    e.gauge(
        "kv_server_kv_subscriptions",
        "Subscriptions (SUBSCRIBE), those of connections closed since included until their \
         bucket's list is next compacted.",
        kv.subscriptions as f64,
    );
    e.counter(
        "kv_server_kv_pushes",
        "Pushes to subscribers (k SET TO v, k DELETED), by result: sent, or dropped because \
         the subscriber fell behind (its unsent output over 256 KiB, and closed) or was closing.",
        &[
            (Some(("result", "sent")), kv.pushes_sent as f64),
            (Some(("result", "dropped")), kv.pushes_dropped as f64),
        ],
    );
    e.gauge(
        "kv_server_kv_pushes_owed",
        "Pushes waiting in the fan-out queue.",
        kv.pushes_owed as f64,
    );
    e.gauge(
        "kv_server_kv_fanout_held_bytes",
        "Bytes the fan-out queue holds.",
        kv.pushes_held_bytes as f64,
    );
}
