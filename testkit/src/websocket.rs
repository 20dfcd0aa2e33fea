//! A WebSocket client's side, as far as the tests and the load generators speak it: the
//! upgrade request (with RFC 6455's example key) and frames as a client masks them.

/// An upgrade request for `/`, with RFC 6455's example key.
pub const UPGRADE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// The accept a server must answer [`UPGRADE_REQUEST`]'s key with.
pub const UPGRADE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A frame whose first byte is `first` (FIN, reserved bits, opcode) carrying `payload`,
/// masked with `mask` as a client's must be, or unmasked when `mask` is None (as a
/// server's is, or as a broken client's would be).
pub fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = vec![first];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        length @ 0..=125 => frame.push(mask_bit | length as u8),
        length @ 126..=65535 => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            frame.extend_from_slice(&mask);
            frame.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(at, byte)| byte ^ mask[at % 4]),
            );
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}
