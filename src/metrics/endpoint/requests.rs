//! HTTP as scrapers speak it, apart from any socket: what has arrived of a scraper's
//! requests (parsed by `httparse`, capped at 8 KiB however the bytes arrive), and the
//! answer each gets: the metrics in the format asked for, 404, 405, 400, with keep-alive or
//! a close as HTTP/1.0 and 1.1 say. The fuzz target drives it without a socket.

use super::*;

/// Longest request (request line and headers) read before answering 400.
pub(super) const MAX_REQUEST_BYTES: usize = 8 * 1024;

pub(super) const MAX_HEADERS: usize = 64;

/// What one request gets.
pub(crate) struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
    /// `HEAD`: the headers of the answer without its body.
    head_only: bool,
    /// The connection closes after this answer.
    pub close: bool,
    minor_version: u8,
    allow: bool,
}

/// What has arrived of a scraper's requests, apart from its socket: how much the next read
/// may take, and the answer to the first request once it is complete, or once it can never
/// be (too large, malformed, cut short by the end of stream).
#[derive(Debug, Default)]
pub(crate) struct Requests {
    pub input: Vec<u8>,
    /// The scraper has sent its end of stream: answer what is here, then close.
    pub read_closed: bool,
}

impl Requests {
    /// How much the next read may take: never more than takes the unanswered input one
    /// byte past the request cap, which is then answered 400, whatever the split.
    pub fn room(&self) -> usize {
        (MAX_REQUEST_BYTES + 1).saturating_sub(self.input.len())
    }

    /// The answer to the first request, once there is one to give.
    pub fn next_answer(&mut self, figures: &mut Figures<'_>) -> Option<Answer> {
        if self.input.is_empty() {
            return None;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let too_large = || Answer::error("400 Bad Request", "request too large\n");
        let (answer, used) = match request.parse(&self.input) {
            Ok(httparse::Status::Complete(used)) if used > MAX_REQUEST_BYTES => {
                (too_large(), self.input.len())
            }
            Ok(httparse::Status::Complete(used)) => (respond(&request, figures), used),
            Ok(httparse::Status::Partial) if self.input.len() > MAX_REQUEST_BYTES => {
                (too_large(), self.input.len())
            }
            Ok(httparse::Status::Partial) if self.read_closed => (
                Answer::error("400 Bad Request", "incomplete request\n"),
                self.input.len(),
            ),
            Ok(httparse::Status::Partial) => return None,
            Err(e) => (
                Answer::error("400 Bad Request", &format!("malformed request: {e}\n")),
                self.input.len(),
            ),
        };
        self.input.drain(..used);
        if self.input.is_empty() {
            self.input = Vec::new();
        }
        Some(answer)
    }
}

pub(super) fn header<'a>(request: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a [u8]> {
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

pub(super) fn has_token(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The answer to one complete request.
pub(super) fn respond(request: &httparse::Request<'_, '_>, figures: &mut Figures<'_>) -> Answer {
    let minor_version = request.version.unwrap_or(1);
    let connection = header(request, "Connection");
    // HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes unless asked not to.
    let keep_alive = if minor_version >= 1 {
        !has_token(connection, "close")
    } else {
        has_token(connection, "keep-alive")
    };
    let has_body = header(request, "Transfer-Encoding").is_some()
        || header(request, "Content-Length").is_some_and(|v| v.trim_ascii() != b"0");
    let method = request.method.unwrap_or("");
    let path = request.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    let mut answer = if method != "GET" && method != "HEAD" {
        let mut answer = Answer::error("405 Method Not Allowed", "only GET and HEAD\n");
        answer.allow = true;
        answer
    } else if has_body {
        Answer::error("400 Bad Request", "a GET has no body\n")
    } else if path != "/metrics" {
        Answer {
            close: !keep_alive,
            ..Answer::error("404 Not Found", "the metrics are at /metrics\n")
        }
    } else {
        let format = Format::negotiate(header(request, "Accept"));
        Answer {
            status: "200 OK",
            content_type: format.content_type(),
            body: {
                let (snapshot, process) = figures();
                exposition::render(&snapshot, &process, format)
            },
            head_only: method == "HEAD",
            close: !keep_alive,
            minor_version: 1,
            allow: false,
        }
    };
    answer.head_only = method == "HEAD";
    answer.minor_version = minor_version;
    answer
}

impl Answer {
    /// An error answer; errors close the connection unless said otherwise.
    fn error(status: &'static str, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            head_only: false,
            close: true,
            minor_version: 1,
            allow: false,
        }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let _ = write!(
            out,
            "HTTP/1.{} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.minor_version,
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.minor_version == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
    }
}
