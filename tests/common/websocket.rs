//! A WebSocket client small enough to send what no library client would: frames built by
//! hand (masked or not, any bits, any length), read back as the server sent them.

use std::io::{Read, Write};

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

pub use kv_testkit::websocket::{UPGRADE_ACCEPT as ACCEPT, UPGRADE_REQUEST};

/// The upgrade request for `path`.
pub fn request(path: &str) -> String {
    String::from_utf8(UPGRADE_REQUEST.to_vec())
        .unwrap()
        .replacen("GET / ", &format!("GET {path} "), 1)
}

/// Sends the upgrade request and reads the answer's head, byte by byte so that no frame
/// behind it is taken; it must be the 101 with the right accept.
pub fn upgrade<S: Read + Write>(stream: &mut S) {
    stream.write_all(request("/").as_bytes()).unwrap();
    stream.flush().unwrap();
    let head = read_head(stream);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nSec-WebSocket-Accept: {ACCEPT}\r\n")),
        "{head}"
    );
}

/// An HTTP answer's head, through its empty line.
pub fn read_head<S: Read>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("the answer's head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A client frame: `first` is the first byte whole (FIN, RSV and opcode), masked with a
/// mask drawn from the payload's length unless `masked` is false.
pub fn frame_with(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = (payload.len() as u32 ^ 0x5A3C_96E1).to_be_bytes();
    kv_testkit::websocket::frame(first, payload, masked.then_some(mask))
}

/// A final, masked client frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(0x80 | opcode, payload, true)
}

/// A message sent as fragments of at most `size` bytes.
pub fn fragments(opcode: u8, payload: &[u8], size: usize) -> Vec<u8> {
    let pieces: Vec<&[u8]> = payload.chunks(size.max(1)).collect();
    let mut bytes = Vec::new();
    for (at, piece) in pieces.iter().enumerate() {
        let code = if at == 0 { opcode } else { 0 };
        let fin = if at + 1 == pieces.len() { 0x80 } else { 0 };
        bytes.extend(frame_with(fin | code, piece, true));
    }
    bytes
}

/// Reads one server frame: its first byte and its payload. A server frame is never masked.
pub fn read_frame<S: Read>(stream: &mut S) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("a frame header");
    assert_eq!(head[1] & 0x80, 0, "a server's frame is not masked");
    let length = match head[1] & 0x7F {
        126 => {
            let mut bytes = [0u8; 2];
            stream.read_exact(&mut bytes).unwrap();
            u64::from(u16::from_be_bytes(bytes))
        }
        127 => {
            let mut bytes = [0u8; 8];
            stream.read_exact(&mut bytes).unwrap();
            u64::from_be_bytes(bytes)
        }
        short => u64::from(short),
    };
    let mut payload = vec![0; length as usize];
    stream.read_exact(&mut payload).expect("a frame's payload");
    (head[0], payload)
}

/// Reads one frame, which must be a final frame of `opcode` carrying `payload`.
pub fn expect_frame<S: Read>(stream: &mut S, opcode: u8, payload: &[u8]) {
    let (first, got) = read_frame(stream);
    assert_eq!(first, 0x80 | opcode, "opcode");
    assert_eq!(got.len(), payload.len(), "payload length");
    assert!(got == payload, "payload differs");
}

/// Reads a close frame, which must carry `code`, then the end of the stream.
pub fn expect_close<S: Read>(stream: &mut S, code: u16) {
    let (first, payload) = read_frame(stream);
    assert_eq!(first, 0x80 | CLOSE, "a close frame");
    assert_eq!(
        payload.get(..2),
        Some(&code.to_be_bytes()[..]),
        "close code"
    );
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after the close: {rest:?}");
}

/// Sends a message in one frame and expects it back.
pub fn expect_echo<S: Read + Write>(stream: &mut S, opcode: u8, payload: &[u8]) {
    stream.write_all(&frame(opcode, payload)).unwrap();
    stream.flush().unwrap();
    expect_frame(stream, opcode, payload);
}
