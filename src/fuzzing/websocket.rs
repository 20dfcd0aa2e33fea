//! The WebSocket layer's property (`websocket_frames`): what it answers does not depend on
//! where reads cut its input, what it holds stays within its bounds, everything it sends is
//! well-formed server frames, and a conversation that follows the rules comes back as a
//! model of RFC 6455 says it must.

use std::time::{Duration, Instant};

use crate::connection::websocket::{Step, WebSocketLayer, MAX_REQUEST_BYTES};
use crate::counters::WebSocketCounts;

use super::{chunks, cuts};

const UPGRADE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The first byte picks the largest message (up to 16 KiB) and the mode: the rest as raw
/// bytes from the first (the opening fuzzed), the rest as raw frames behind a valid
/// upgrade, or the rest as the recipe of a conversation that keeps the rules, sent as
/// masked frames, fragments and pings, whose answers a model predicts byte for byte.
pub fn websocket_frames(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max_message = 1 + usize::from(first >> 2) * 256;
    let (stream, expected) = match first % 4 {
        0 => (rest.to_vec(), None),
        1 | 2 => ([UPGRADE, rest].concat(), None),
        _ => {
            let (frames, answers) = conversation(rest, max_message);
            ([UPGRADE, &frames].concat(), Some(answers))
        }
    };
    let whole = serve(&[&stream], max_message);
    let split = serve(&chunks(&stream, &cuts(data, stream.len(), 8)), max_message);
    assert_eq!(
        whole, split,
        "the answer depends on where reads cut the input"
    );
    if let Some(answers) = expected {
        let head_end = whole
            .0
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a 101")
            + 4;
        assert!(whole.0.starts_with(b"HTTP/1.1 101 "));
        assert!(
            whole.0[head_end..] == answers[..],
            "the answers are not the model's"
        );
        assert_eq!(whole.1, Step::Going);
    }
}

/// What the layer sends for `pieces` read one after another, and how it ended.
fn serve(pieces: &[&[u8]], max_message: usize) -> (Vec<u8>, Step) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut layer = WebSocketLayer::new(deadline, max_message);
    let mut counts = WebSocketCounts::default();
    let mut out = Vec::new();
    let mut step = Step::Going;
    for piece in pieces {
        step = layer.receive(piece, &mut out, &mut counts);
        // What it holds: the request within its bound, a message within its limit.
        assert!(
            layer.held() <= MAX_REQUEST_BYTES.max(max_message),
            "{}",
            layer.held()
        );
        if step == Step::Ending {
            break;
        }
    }
    if let Some(at) = out.windows(4).position(|w| w == b"\r\n\r\n") {
        if out.starts_with(b"HTTP/1.1 101 ") {
            check_server_frames(&out[at + 4..], &counts);
        }
    }
    (out, step)
}

/// Server frames: final, unmasked, lengths that add up, a data frame per message sent (and
/// at the end, perhaps, a binary one still being streamed).
fn check_server_frames(mut frames: &[u8], counts: &WebSocketCounts) {
    let mut data_frames = 0;
    while !frames.is_empty() {
        assert!(frames.len() >= 2, "a cut frame header");
        assert_eq!(frames[0] & 0xF0, 0x80, "final, no reserved bits");
        assert_eq!(frames[1] & 0x80, 0, "unmasked");
        let (length, header) = match frames[1] & 0x7F {
            126 => (usize::from(u16::from_be_bytes([frames[2], frames[3]])), 4),
            127 => (
                u64::from_be_bytes(frames[2..10].try_into().unwrap()) as usize,
                10,
            ),
            short => (usize::from(short), 2),
        };
        if header + length > frames.len() {
            // A binary message echoed as it arrives, its payload still coming.
            assert_eq!(
                frames[0], 0x82,
                "only a streamed binary frame is left unfinished"
            );
            break;
        }
        if matches!(frames[0] & 0x0F, 1 | 2) {
            data_frames += 1;
        }
        frames = &frames[header + length..];
    }
    assert_eq!(data_frames, counts.messages_sent);
}

/// A conversation within the rules, drawn from `recipe`: messages (text of ASCII letters
/// or binary, each within the limit), cut into fragments, with pings among them. Returns
/// its frames, masked, and the answers RFC 6455 calls for, in order.
fn conversation(recipe: &[u8], max_message: usize) -> (Vec<u8>, Vec<u8>) {
    let (mut frames, mut answers) = (Vec::new(), Vec::new());
    let mut bytes = recipe.chunks(4);
    while let Some(&[kind, size, cut, extra]) = bytes.next() {
        let length = (usize::from(size) * 67 + usize::from(extra)) % (max_message + 1);
        let text = kind & 1 == 1;
        let payload: Vec<u8> = (0..length)
            .map(|n| {
                if text {
                    b'a' + (n % 26) as u8
                } else {
                    (n * 31 + usize::from(extra)) as u8
                }
            })
            .collect();
        let opcode = if text { 1 } else { 2 };
        let pieces: Vec<&[u8]> = if payload.is_empty() {
            vec![&[]]
        } else {
            payload.chunks(1 + usize::from(cut) * 3).collect()
        };
        for (at, piece) in pieces.iter().enumerate() {
            let fin = if at + 1 == pieces.len() { 0x80 } else { 0 };
            let code = if at == 0 { opcode } else { 0 };
            client_frame(fin | code, piece, [kind, size, cut, extra], &mut frames);
            if kind & 2 == 2 && fin == 0 {
                // A ping between fragments: its pong comes at once.
                client_frame(0x89, &[extra; 3], [1, 2, 3, 4], &mut frames);
                server_frame(0xA, &[extra; 3], &mut answers);
            }
        }
        server_frame(opcode, &payload, &mut answers);
    }
    (frames, answers)
}

fn client_frame(first: u8, payload: &[u8], mask: [u8; 4], into: &mut Vec<u8>) {
    into.push(first);
    push_length(0x80, payload.len(), into);
    into.extend_from_slice(&mask);
    into.extend(
        payload
            .iter()
            .enumerate()
            .map(|(at, byte)| byte ^ mask[at % 4]),
    );
}

fn server_frame(opcode: u8, payload: &[u8], into: &mut Vec<u8>) {
    into.push(0x80 | opcode);
    push_length(0, payload.len(), into);
    into.extend_from_slice(payload);
}

fn push_length(mask_bit: u8, length: usize, into: &mut Vec<u8>) {
    if length < 126 {
        into.push(mask_bit | length as u8);
    } else if length <= 0xFFFF {
        into.push(mask_bit | 126);
        into.extend_from_slice(&(length as u16).to_be_bytes());
    } else {
        into.push(mask_bit | 127);
        into.extend_from_slice(&(length as u64).to_be_bytes());
    }
}
