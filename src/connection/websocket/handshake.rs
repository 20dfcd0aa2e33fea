//! The opening of a `--websocket` connection (RFC 6455, section 4): the client's HTTP/1.1
//! request, read within 8 KiB, and the one answer it gets: the upgrade (101), the page for
//! people at `/`, or an error status. Pure: the request's bytes in, the answer's bytes out.
//!
//! An upgrade is taken on any path, as echo endpoints do (clients are pointed at `/`,
//! `/echo`, `/ws`); a request without Upgrade gets the page at `/` and 404 elsewhere. Every
//! answer but the upgrade ends the connection (`Connection: close`): this is an echo
//! server, not a web server, and a browser asks for its next resource on a new connection.

use aws_lc_rs::digest;

use crate::counters::WebSocketOpening;

/// The longest request taken: a browser's upgrade with its cookies and headers is a few
/// hundred bytes; nginx's default for a request line and headers is 8 KiB too.
pub(crate) const MAX_REQUEST_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
/// RFC 6455's key suffix: the accept is base64(SHA-1(key + this)).
const KEY_SUFFIX: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The page for people: HTML and script in one file, compiled in, fetching nothing else.
pub(crate) const PAGE: &str = include_str!("page.html");

/// What a request (so far) comes to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opening {
    /// More of the request is to come.
    Incomplete,
    /// Answered (the answer is in the output): `Upgraded` goes on as a WebSocket after the
    /// request's `length` bytes; every other outcome ends the connection.
    Answered {
        outcome: WebSocketOpening,
        length: usize,
    },
}

/// Reads `request`, all that has come of it, and when it is complete or cannot be a
/// request, appends the answer to `out`.
pub(crate) fn open(request: &[u8], out: &mut Vec<u8>) -> Opening {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let length = match parsed.parse(request) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if request.len() < MAX_REQUEST_BYTES => {
            return Opening::Incomplete
        }
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            let why = "The request's line and headers are over 8 KiB.\n";
            return refuse("431 Request Header Fields Too Large", why, out);
        }
        Err(_) => {
            return Opening::Answered {
                outcome: WebSocketOpening::NotHttp,
                length: request.len(),
            }
        }
    };
    let method = parsed.method.unwrap_or_default();
    let wants_upgrade = has_token(parsed.headers, "upgrade", "websocket");
    let outcome = if wants_upgrade {
        upgrade(&parsed, out)
    } else if method != "GET" && method != "HEAD" {
        out.extend_from_slice(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n");
        text_body("Only GET and HEAD are answered here.\n", out);
        WebSocketOpening::Refused
    } else if parsed.path.unwrap_or_default().split('?').next() == Some("/") {
        page(method == "HEAD", out);
        WebSocketOpening::Page
    } else {
        out.extend_from_slice(b"HTTP/1.1 404 Not Found\r\n");
        text_body(
            "Not found: the page is at /, the WebSocket echo on any path.\n",
            out,
        );
        WebSocketOpening::NotFound
    };
    Opening::Answered { outcome, length }
}

/// The answer to a request for an upgrade: 101 if it is one RFC 6455 allows, else why not.
fn upgrade(request: &httparse::Request<'_, '_>, out: &mut Vec<u8>) -> WebSocketOpening {
    let headers = &*request.headers;
    let why = if request.method != Some("GET") {
        Some("An upgrade to WebSocket is a GET.\n")
    } else if request.version != Some(1) {
        Some("An upgrade to WebSocket needs HTTP/1.1.\n")
    } else if header(headers, "host").is_none() {
        Some("The request has no Host header.\n")
    } else if !has_token(headers, "connection", "upgrade") {
        Some("The request's Connection header does not say Upgrade.\n")
    } else if header(headers, "sec-websocket-key").is_none_or(|key| !is_key(key)) {
        Some("Sec-WebSocket-Key must be 16 bytes in base64.\n")
    } else {
        None
    };
    if let Some(why) = why {
        out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\n");
        text_body(why, out);
        return WebSocketOpening::Refused;
    }
    if header(headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        out.extend_from_slice(
            b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
        );
        text_body("This server speaks WebSocket version 13 (RFC 6455).\n", out);
        return WebSocketOpening::Refused;
    }
    let key = header(headers, "sec-websocket-key").unwrap_or_default();
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    accept_into(key.trim_ascii(), out);
    out.extend_from_slice(b"\r\n\r\n");
    WebSocketOpening::Upgraded
}

/// The page, with headers that keep it to itself: its script may talk to this server
/// alone, and nothing is fetched from anywhere.
fn page(head_only: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
          Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
          style-src 'unsafe-inline'; connect-src 'self'\r\n\
          X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n",
    );
    out.extend_from_slice(format!("Content-Length: {}\r\n", PAGE.len()).as_bytes());
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if !head_only {
        out.extend_from_slice(PAGE.as_bytes());
    }
}

fn refuse(status: &str, why: &str, out: &mut Vec<u8>) -> Opening {
    out.extend_from_slice(format!("HTTP/1.1 {status}\r\n").as_bytes());
    text_body(why, out);
    Opening::Answered {
        outcome: WebSocketOpening::Refused,
        length: 0,
    }
}

/// The rest of a short plain-text answer, after its status line.
fn text_body(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(
        format!(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{text}",
            text.len()
        )
        .as_bytes(),
    );
}

/// The first header called `name` (case-insensitive).
fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value)
}

/// Whether any header called `name` lists `token` (comma-separated, case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case(name))
        .flat_map(|header| header.value.split(|&byte| byte == b','))
        .any(|listed| listed.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A Sec-WebSocket-Key: 16 bytes in base64, which is 22 characters of the alphabet and
/// "==".
fn is_key(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/')
}

/// Appends Sec-WebSocket-Accept for `key`.
fn accept_into(key: &[u8], out: &mut Vec<u8>) {
    let mut context = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key);
    context.update(KEY_SUFFIX);
    base64_into(context.finish().as_ref(), out);
}

/// Standard base64 with padding: 28 characters for the 20 bytes of a SHA-1, the one thing
/// encoded here (a crate for it would be the largest part of this file's dependencies).
fn base64_into(bytes: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let byte = |at: usize| u32::from(chunk.get(at).copied().unwrap_or(0));
        let group = byte(0) << 16 | byte(1) << 8 | byte(2);
        for at in 0..4 {
            out.push(if at <= chunk.len() {
                ALPHABET[(group >> (18 - 6 * at)) as usize & 63]
            } else {
                b'='
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(request: &[u8]) -> (Opening, String) {
        let mut out = Vec::new();
        let opening = open(request, &mut out);
        (opening, String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_rfc_example_key_is_accepted_as_the_rfc_says() {
        let request = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n\x81";
        let (opening, text) = answer(request);
        assert_eq!(
            opening,
            Opening::Answered {
                outcome: WebSocketOpening::Upgraded,
                length: request.len() - 1
            }
        );
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn base64_pads_as_the_standard_does() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
        ] {
            let mut out = Vec::new();
            base64_into(bytes, &mut out);
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn each_request_gets_its_answer() {
        let upgrade = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let cases: [(String, &str, WebSocketOpening); 8] = [
            (
                "GET / HTTP/1.1\r\nHost: a\r\n\r\n".into(),
                "200",
                WebSocketOpening::Page,
            ),
            (
                "GET /?x HTTP/1.0\r\n\r\n".into(),
                "200",
                WebSocketOpening::Page,
            ),
            (
                "GET /x HTTP/1.1\r\nHost: a\r\n\r\n".into(),
                "404",
                WebSocketOpening::NotFound,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\n\r\n".into(),
                "405",
                WebSocketOpening::Refused,
            ),
            (
                format!("GET /e HTTP/1.1\r\nHost: a\r\n{upgrade}\r\n"),
                "426",
                WebSocketOpening::Refused,
            ),
            (
                format!("GET /e HTTP/1.1\r\nHost: a\r\n{upgrade}Sec-WebSocket-Version: 8\r\n\r\n"),
                "426",
                WebSocketOpening::Refused,
            ),
            (
                format!("GET / HTTP/1.1\r\n{upgrade}Sec-WebSocket-Version: 13\r\n\r\n"),
                "400",
                WebSocketOpening::Refused,
            ),
            (
                format!("GET /e HTTP/1.1\r\nHOST: a\r\n{upgrade}sec-websocket-version: 13\r\n\r\n"),
                "101",
                WebSocketOpening::Upgraded,
            ),
        ];
        for (request, status, outcome) in cases {
            let (opening, text) = answer(request.as_bytes());
            assert_eq!(
                opening,
                Opening::Answered {
                    outcome,
                    length: request.len()
                },
                "{request:?}"
            );
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status} ")),
                "{request:?}: {text}"
            );
        }
    }

    #[test]
    fn a_request_is_awaited_up_to_its_bound_and_refused_past_it() {
        let mut request = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
        assert_eq!(answer(&request).0, Opening::Incomplete);
        request.resize(MAX_REQUEST_BYTES, b'a');
        let (opening, text) = answer(&request);
        assert!(matches!(
            opening,
            Opening::Answered {
                outcome: WebSocketOpening::Refused,
                ..
            }
        ));
        assert!(text.starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn bytes_that_are_not_http_get_no_answer() {
        for bytes in [
            &b"hello\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"GET / HTTP/1.1\r\nbad header\r\n",
        ] {
            let (opening, text) = answer(bytes);
            assert!(
                matches!(
                    opening,
                    Opening::Answered {
                        outcome: WebSocketOpening::NotHttp,
                        ..
                    }
                ),
                "{bytes:?}"
            );
            assert!(text.is_empty());
        }
    }
}
