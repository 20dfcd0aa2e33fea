//! The metric families of `--websocket`: how openings ended, messages and their payload
//! bytes each way, and the close frames the server sent, by code.

use super::exposition::Encoder;
use crate::counters::{WebSocketCounts, WebSocketOpening, CLOSE_CODES};

pub(super) fn encode(e: &mut Encoder, websocket: &WebSocketCounts) {
    let openings: Vec<_> = WebSocketOpening::ALL
        .iter()
        .map(|&opening| {
            (
                Some(("result", opening.label())),
                websocket.openings[opening as usize] as f64,
            )
        })
        .collect();
    e.counter(
        "kv_server_websocket_openings",
        "HTTP requests that opened connections (with --websocket), by result: upgraded to a \
         WebSocket, page (GET / without an upgrade), not_found, refused (400, 405, 426 or \
         431), not_http (closed without an answer).",
        &openings,
    );
    let each_way = |received: u64, sent: u64| {
        [
            (Some(("direction", "received")), received as f64),
            (Some(("direction", "sent")), sent as f64),
        ]
    };
    e.counter(
        "kv_server_websocket_messages",
        "WebSocket data messages (text or binary, however many fragments), by direction.",
        &each_way(websocket.messages_received, websocket.messages_sent),
    );
    e.counter(
        "kv_server_websocket_message_bytes",
        "Payload bytes of WebSocket data messages, by direction.",
        &each_way(websocket.bytes_received, websocket.bytes_sent),
    );
    let labels: Vec<String> = (0..websocket.closes_sent.len())
        .map(WebSocketCounts::close_label)
        .collect();
    let closes: Vec<_> = labels
        .iter()
        .zip(websocket.closes_sent)
        .map(|(label, count)| (Some(("code", label.as_str())), count as f64))
        .collect();
    debug_assert_eq!(closes.len(), CLOSE_CODES.len() + 2);
    e.counter(
        "kv_server_websocket_closes_sent",
        "Close frames the server sent, by code: the client's own code echoed (1000, 1001, \
         other for 1012 to 1014 and the applications' 3000 to 4999, none for a close \
         without one), 1001 at shutdown, 1002 for a protocol error, 1007 for text that is \
         not UTF-8, 1009 for a message over --websocket-max-message.",
        &closes,
    );
}
