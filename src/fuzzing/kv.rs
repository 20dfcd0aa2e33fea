//! The key-value store's property (`--kv`): commands built from the fuzzer's bytes, with
//! long lines, odd whitespace and a budget that runs out, framed as a connection frames
//! them (split anywhere, a line limit from the input) and answered by the store, give
//! exactly the replies a model (a `HashMap` and the budget's arithmetic) expects.

use std::collections::{HashMap, HashSet};

use crate::handler::LineHandler;
use crate::kv::{Client, Kv, BUCKET_COST, ENTRY_COST, SUBSCRIPTION_COST};
use crate::line;

use super::{chunks, cuts};

const BUCKETS: [&[u8]; 2] = [b"a", b"bb"];
const KEYS: [&[u8]; 2] = [b"x", b"y\xff"];
const SPACES: [&[u8]; 4] = [b" ", b"\t", b"  ", "\u{3000}".as_bytes()];

/// What the model holds: the buckets, the subscriptions, and the budget spent.
struct Model {
    buckets: HashMap<&'static [u8], HashMap<&'static [u8], Vec<u8>>>,
    subscribed: HashSet<&'static [u8]>,
    bytes: usize,
    max_bytes: usize,
}

impl Model {
    /// The reply to one command, the model changed.
    fn run(&mut self, words: &[&'static [u8]], value: &[u8]) -> Vec<u8> {
        let ok = b"OK\r\n".to_vec();
        let not_found = b"NOT FOUND\r\n".to_vec();
        let error = b"ERROR\r\n".to_vec();
        match words {
            [b"CREATE", bucket] => {
                let cost = 2 * bucket.len() + BUCKET_COST;
                if self.buckets.contains_key(bucket) {
                    ok
                } else if self.bytes + cost > self.max_bytes {
                    error
                } else {
                    self.bytes += cost;
                    self.buckets.insert(bucket, HashMap::new());
                    ok
                }
            }
            [b"PUT", bucket, key] => {
                let Some(entries) = self.buckets.get_mut(bucket) else {
                    return not_found;
                };
                let bytes = match entries.get(key) {
                    Some(old) => self.bytes - old.len() + value.len(),
                    None => self.bytes + key.len() + value.len() + ENTRY_COST,
                };
                if bytes > self.max_bytes {
                    return error;
                }
                self.bytes = bytes;
                entries.insert(key, value.to_vec());
                let mut reply = ok;
                if self.subscribed.contains(bucket) {
                    reply.extend([*key, b" SET TO ", value, b"\r\n"].concat());
                }
                reply
            }
            [b"GET", bucket, key] => match self.buckets.get(bucket) {
                None => not_found,
                Some(entries) => {
                    let mut reply = entries.get(key).cloned().unwrap_or_default();
                    reply.extend(b"\r\nOK\r\n");
                    reply
                }
            },
            [b"DELETE", bucket, key] => {
                let Some(entries) = self.buckets.get_mut(bucket) else {
                    return not_found;
                };
                if let Some(old) = entries.remove(key) {
                    self.bytes -= key.len() + old.len() + ENTRY_COST;
                }
                let mut reply = ok;
                if self.subscribed.contains(bucket) {
                    reply.extend([*key, b" DELETED\r\n"].concat());
                }
                reply
            }
            [b"SUBSCRIBE", bucket] => {
                if !self.buckets.contains_key(bucket) {
                    not_found
                } else if self.subscribed.contains(bucket) {
                    Vec::new()
                } else if self.bytes + SUBSCRIPTION_COST > self.max_bytes {
                    error
                } else {
                    self.bytes += SUBSCRIPTION_COST;
                    self.subscribed.insert(bucket);
                    Vec::new()
                }
            }
            _ => b"UNKNOWN COMMAND\r\n".to_vec(),
        }
    }
}

/// Answers a connection's stream as the connection does: framed at `max`, each piece to
/// the handler, pieces that continue a long line told apart; the tail at the end.
fn answer_stream(kv: &mut Kv, reads: &[&[u8]], max: usize) -> Vec<u8> {
    let mut partial = Vec::new();
    let mut in_long_line = false;
    let mut replies = Vec::new();
    let mut scratch = Vec::new();
    let mut answer = |piece: &[u8], continued: bool| {
        scratch.clear();
        let answer = if continued {
            kv.respond_continued(piece, &mut scratch)
        } else {
            kv.respond(piece, &mut scratch)
        };
        replies.extend_from_slice(answer);
        Ok::<(), ()>(())
    };
    for read in reads {
        line::frame(&mut partial, read, max, &mut |piece| {
            let continued = in_long_line;
            in_long_line = !piece.ends_with(b"\n");
            answer(piece, continued)
        })
        .unwrap();
    }
    line::finish(&mut partial, &mut |piece| answer(piece, in_long_line)).unwrap();
    replies
}

pub fn kv_commands(data: &[u8]) {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let max = 12 + usize::from(settings % 64);
    let max_bytes = 300 + 40 * usize::from(settings / 64);
    let mut model = Model {
        buckets: HashMap::new(),
        subscribed: HashSet::new(),
        bytes: 0,
        max_bytes,
    };
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut bytes = rest.chunks(3).peekable();
    while let Some(choice) = bytes.next() {
        let pick = |at: usize| usize::from(choice.get(at).copied().unwrap_or(0));
        let (bucket, key) = (BUCKETS[pick(1) % 2], KEYS[pick(1) / 2 % 2]);
        let value_len = 1 + pick(2) % 24;
        let value: Vec<u8> = (0..value_len)
            .map(|i| b'0' + ((pick(2) + i) % 40) as u8)
            .collect();
        let words: Vec<&'static [u8]> = match pick(0) % 8 {
            0 => vec![b"CREATE", bucket],
            1 | 5 => vec![b"PUT", bucket, key],
            2 => vec![b"GET", bucket, key],
            3 => vec![b"DELETE", bucket, key],
            4 => vec![b"SUBSCRIBE", bucket],
            6 => vec![b"GET", bucket],
            _ => vec![b"put", bucket, key],
        };
        let space = SPACES[pick(0) / 8 % 4];
        let mut line = Vec::new();
        if pick(0) / 32 % 2 == 1 {
            line.extend_from_slice(space);
        }
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                line.extend_from_slice(space);
            }
            line.extend_from_slice(word);
        }
        if words.len() == 3 && words[0] != b"GET" && words[0] != b"DELETE" {
            line.extend_from_slice(space);
            line.extend_from_slice(&value);
        }
        let last = bytes.peek().is_none() && pick(0) / 64 % 2 == 1;
        if !last {
            line.extend_from_slice(if pick(0) / 128 == 1 { b"\r\n" } else { b"\n" });
        }
        // A line over the limit (with its line end), or a last line without one that
        // reaches it, is refused unread.
        let too_long = if last {
            line.len() >= max
        } else {
            line.len() > max
        };
        if too_long {
            expected.extend_from_slice(b"ERROR\r\n");
        } else {
            expected.extend(model.run(&words, &value));
        }
        wire.extend_from_slice(&line);
    }
    let points = cuts(data, wire.len(), 1 + usize::from(settings % 7));
    let mut kv = Kv::new(max_bytes, max);
    kv.serve(Client { key: 1, serial: 1 });
    let replies = answer_stream(&mut kv, &chunks(&wire, &points), max);
    assert_eq!(
        String::from_utf8_lossy(&replies),
        String::from_utf8_lossy(&expected),
        "line limit {max}, budget {max_bytes}, stream {:?}",
        String::from_utf8_lossy(&wire)
    );
}
