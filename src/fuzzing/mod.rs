//! The properties the fuzz targets in `fuzz/` check, one function per decoder of untrusted
//! bytes, kept beside the code they hold for: each takes the fuzzer's bytes, derives its
//! parameters (limits, where the reads split) from the first of them, and panics when a
//! property fails. `fuzz/` calls them under libFuzzer (`cargo +nightly fuzz run NAME`); the
//! inputs it once failed on live in `fuzz/regressions/NAME/` and run under `cargo test` on
//! the stable toolchain (the tests below), so that a fixed bug stays fixed.
//!
//! Not part of the API: hidden from the documentation, and nothing in the server calls it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::connection::proxy::{self, Header, HeaderReader};
use crate::connection::telnet::{self, Piece, SubnegotiationTooLong, Telnet};

use crate::counters::Traffic;
use crate::line;
use crate::metrics::endpoint::Requests;
use crate::metrics::Snapshot;
use crate::udp::{RepeatMemory, SourceRates};

mod kv;
mod tls;
mod websocket;

pub use kv::kv_commands;
pub use tls::tls_records;
pub use websocket::websocket_frames;

/// Cut points in `0..=len`, sorted, drawn from `seed`: at most `count`.
fn cuts(seed: &[u8], len: usize, count: usize) -> Vec<usize> {
    let mut state = seed.iter().fold(0x9E37_79B9_7F4A_7C15u64, |s, &b| {
        (s ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    }) | 1;
    let mut points: Vec<usize> = (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % (len as u64 + 1)) as usize
        })
        .collect();
    points.sort_unstable();
    points
}

/// `data` as the reads that end at `points`.
fn chunks<'a>(data: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut last = 0;
    for &point in points {
        out.push(&data[last..point]);
        last = point;
    }
    out.push(&data[last..]);
    out
}

/// The PROXY header: a header split across reads, gathered as a connection gathers it, is
/// parsed as the whole buffer is; a prefix that is complete or invalid stays so.
pub fn proxy_header(data: &[u8]) {
    let whole = proxy::parse(data);
    // Every split point for short inputs, a sample of them for long ones.
    let points: Vec<usize> = if data.len() <= 300 {
        (0..=data.len()).collect()
    } else {
        cuts(data, data.len(), 64)
    };
    for point in points {
        let incremental = gather_header(&[&data[..point], &data[point..]]);
        match (&whole, &incremental) {
            (Header::Complete { .. }, _) | (Header::Invalid(_), _) => {
                assert_eq!(summary(&incremental), summary(&whole), "split at {point}")
            }
            (Header::Incomplete, Header::Incomplete) => {}
            (Header::Incomplete, other) => {
                panic!(
                    "split at {point}: {:?} where the whole is incomplete",
                    summary(other)
                )
            }
        }
    }
    // A prefix that is complete or invalid stays so.
    for end in cuts(data, data.len(), 8) {
        let prefix = proxy::parse(&data[..end]);
        if !matches!(prefix, Header::Incomplete) {
            assert_eq!(summary(&prefix), summary(&whole), "prefix of {end}");
        }
    }
}

/// What a header parse says, comparable (the reason of an invalid one is not compared).
fn summary(header: &Header) -> String {
    match header {
        Header::Incomplete => "incomplete".to_owned(),
        Header::Invalid(_) => "invalid".to_owned(),
        Header::Complete {
            len,
            client,
            version,
        } => format!("complete {len} {client:?} v{version}"),
    }
}

/// Gathers reads as a connection's header layer does, to the first answer that is not
/// incomplete; a complete header's length is counted from the start of the stream.
fn gather_header(reads: &[&[u8]]) -> Header {
    let mut reader = HeaderReader::default();
    let mut before = 0;
    for arrived in reads {
        match reader.take(arrived) {
            Header::Incomplete => before += arrived.len(),
            Header::Complete {
                len,
                client,
                version,
            } => {
                assert!(
                    len > 0 && len <= arrived.len(),
                    "a header that ended outside this read"
                );
                return Header::Complete {
                    len: before + len,
                    client,
                    version,
                };
            }
            invalid => return invalid,
        }
    }
    Header::Incomplete
}

/// Telnet: any split gives the same data and the same pieces (Are You There aside, which
/// is answered once per read); escaped data without line ends comes back once, unchanged;
/// a sub-negotiation never runs past its bound.
pub fn telnet(data: &[u8]) {
    let whole = decode_telnet(&[data]);
    let points = cuts(data, data.len(), 8);
    let split = decode_telnet(&chunks(data, &points));
    assert_eq!(whole, split, "splits at {points:?}");
    let plain: Vec<u8> = data
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let mut escaped = Vec::new();
    telnet::escape_into(&plain, &mut escaped);
    let (back, _) = decode_telnet(&[&escaped]);
    assert_eq!(back, plain);
}

/// Decodes `reads` in order: the data with line ends written out, and the other pieces.
fn decode_telnet(reads: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
    #[derive(Debug)]
    struct TooLong;
    impl From<SubnegotiationTooLong> for TooLong {
        fn from(_: SubnegotiationTooLong) -> Self {
            TooLong
        }
    }
    let mut decoder = Telnet::new();
    let mut data = Vec::new();
    let mut other = Vec::new();
    for read in reads {
        let decoded = decoder.decode::<TooLong>(read, &mut |piece| {
            match piece {
                Piece::Data(range) => data.extend_from_slice(&read[range]),
                Piece::LineEnd => data.extend_from_slice(telnet::LINE_END),
                Piece::Reply(bytes) if bytes.starts_with(b"\r\n[kv_server") => {}
                piece => other.push(format!("{piece:?}")),
            }
            Ok(())
        });
        if decoded.is_err() {
            other.push("too long".to_owned());
            break;
        }
    }
    (data, other)
}

/// Line framing: what is handed on, then what is held, is the input; nothing held reaches
/// the limit; every piece is whole lines or exactly one cut piece of the limit.
pub fn line_framing(data: &[u8]) {
    let Some((&limit, stream)) = data.split_first() else {
        return;
    };
    let max = 1 + usize::from(limit % 80);
    let points = cuts(data, stream.len(), 8);
    let mut partial = Vec::new();
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    for read in chunks(stream, &points) {
        line::frame::<()>(&mut partial, read, max, &mut |piece| {
            pieces.push(piece.to_vec());
            Ok(())
        })
        .unwrap();
        assert!(
            partial.len() < max,
            "{} bytes held, limit {max}",
            partial.len()
        );
    }
    let mut all = pieces.concat();
    all.extend_from_slice(&partial);
    assert_eq!(all, stream);
    for piece in &pieces {
        assert!(!piece.is_empty());
        if !piece.ends_with(b"\n") {
            assert_eq!(piece.len(), max);
        }
        for line in piece.split_inclusive(|&b| b == b'\n') {
            assert!(
                line.len() <= max,
                "a line of {} bytes, limit {max}",
                line.len()
            );
        }
    }
}

/// The metrics requests of one scraper arriving in reads of any size, as the endpoint
/// reads them: input never held past the cap, every answer well-formed HTTP, and
/// everything answered once the scraper closes.
pub fn metrics_requests(data: &[u8]) {
    let points = cuts(data, data.len(), 16);
    let mut requests = Requests::default();
    let mut figures = || (empty_snapshot(), Default::default());
    let mut answers = 0;
    let mut check = |requests: &mut Requests| {
        while let Some(answer) = requests.next_answer(&mut figures) {
            let mut out = Vec::new();
            answer.write_to(&mut out);
            well_formed(&out);
            answers += 1;
            assert!(answers <= data.len(), "more answers than bytes");
        }
    };
    for read in chunks(data, &points) {
        let mut read = read;
        while !read.is_empty() {
            let take = read.len().min(requests.room().max(1));
            requests.input.extend_from_slice(&read[..take]);
            read = &read[take..];
            assert!(requests.input.len() <= 8 * 1024 + 1, "input past the cap");
            check(&mut requests);
        }
    }
    requests.read_closed = true;
    check(&mut requests);
    assert!(
        requests.input.is_empty(),
        "input left after the end of stream"
    );
}

fn well_formed(answer: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(answer).expect("an HTTP answer") else {
        panic!(
            "an incomplete answer: {:?}",
            String::from_utf8_lossy(answer)
        );
    };
    assert!(matches!(response.code, Some(200 | 400 | 404 | 405)));
    let length: usize = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length");
    // HEAD has the headers of the answer, not its body.
    let body = answer.len() - head;
    assert!(
        body == length || body == 0,
        "{body} bytes of body for {length}"
    );
}

fn empty_snapshot() -> Snapshot {
    Snapshot {
        accepts: Default::default(),
        open: [0; 2],
        closed: Default::default(),
        traffic: Traffic::default(),
        buffers: Default::default(),
        turns: Default::default(),
        start_time: std::time::UNIX_EPOCH,
        udp: None,
        tls: None,
        kv: None,
        websocket: None,
    }
}

/// The UDP sources' rates: the table never holds more than its capacity, and no source
/// gets more than its rate allows (a burst, then the rate) however sources come and go.
pub fn udp_rates(data: &[u8]) {
    const RATE: u32 = 5;
    const CAPACITY: usize = 8;
    let start = Instant::now();
    let mut rates = SourceRates::new(RATE, CAPACITY);
    let mut now = start;
    let mut admitted = [0u64; 256];
    for pair in data.chunks_exact(2) {
        now += Duration::from_millis(u64::from(pair[1] % 64));
        let source = IpAddr::from([10, 0, 0, pair[0] % 16]);
        if rates.admit(source, now) {
            admitted[usize::from(pair[0] % 16)] += 1;
        }
        assert!(rates.tracked() <= CAPACITY);
    }
    // Each source, and the sources sharing the overflow bucket together, had at most a
    // burst plus the rate over the time that passed.
    let elapsed = now.duration_since(start).as_secs_f64();
    let bound = (f64::from(RATE) * (1.0 + elapsed)).ceil() as u64;
    let total: u64 = admitted.iter().sum();
    assert!(
        total <= bound * (CAPACITY as u64 + 1) * 2,
        "{total} admitted in {elapsed} s"
    );
    udp_repeats(data);
}

/// The loop protection's memory of repeats, fed any pace: one (sender, datagram) pair
/// alone is never answered more than [`crate::udp::REPEATS`] times while it keeps coming
/// back within the window, and answered again after a longer pause; a second memory, fed
/// any mix of senders and datagrams, takes them all without fail. (The two are apart
/// because in one table another pair may take the watched pair's entry, which starts its
/// count again: by design, and not something a model of the count could foresee.)
fn udp_repeats(data: &[u8]) {
    let window = Duration::from_millis(u64::from(crate::udp::REPEAT_WINDOW_MS));
    let mut now = Instant::now();
    let (mut alone, mut mixed) = (RepeatMemory::new(), RepeatMemory::new());
    let watched = SocketAddr::from(([10, 0, 0, 1], 5000));
    let (mut streak, mut last): (u32, Option<Instant>) = (0, None);
    for triple in data.chunks_exact(3) {
        // Gaps of up to 2^16 ms: some within the window, some beyond it.
        now += Duration::from_millis(u64::from(u16::from_le_bytes([triple[1], triple[2]])));
        let restarts = last.is_none_or(|last| now.duration_since(last) > window);
        if restarts {
            streak = 0;
        }
        last = Some(now);
        let answered = alone.admit(watched, b"the loop's datagram", now);
        assert_eq!(
            answered,
            streak < crate::udp::REPEATS,
            "after {streak} in a row"
        );
        streak += 1;
        let other = SocketAddr::from(([10, 0, 1, triple[0]], u16::from(triple[1]) + 1024));
        mixed.admit(other, &triple[..usize::from(triple[2] % 4)], now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each target over the inputs in `fuzz/regressions/NAME/` and a few made by hand.
    fn replay(name: &str, check: fn(&[u8]), by_hand: &[&[u8]]) {
        for input in by_hand {
            check(input);
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(name);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                let result = std::panic::catch_unwind(|| check(&input));
                assert!(result.is_ok(), "{} fails again", path.display());
            }
        }
    }

    #[test]
    fn proxy_header_regressions() {
        replay(
            "proxy_header",
            proxy_header,
            &[
                b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 4040\r\nhello\n",
                b"PROXY UNKNOWN\r\n",
                b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x01\xdb\xc4\x0f\xc8",
                b"GET / HTTP/1.1\r\n",
            ],
        );
    }

    #[test]
    fn telnet_regressions() {
        replay(
            "telnet",
            telnet,
            &[
                b"\xff\xfa\x18\xff\xff\xf0leak\r\n\xff\xf0ok\r\n",
                b"a\rb\r\0c\nd\r\n\xff\xf4\xff\xfd\x06",
                b"\xff\xf6\xff\xf6\xff\xff",
            ],
        );
    }

    #[test]
    fn line_framing_regressions() {
        replay(
            "line_framing",
            line_framing,
            &[
                b"\x03abcdefg\nhi\n",
                b"\x00\n\n\n",
                b"\x4fno newline at all",
            ],
        );
    }

    #[test]
    fn metrics_requests_regressions() {
        replay(
            "metrics_requests",
            metrics_requests,
            &[
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nHEAD /metrics HTTP/1.0\r\n\r\n",
                b"GET /other HTTP/1.1\r\n\r\nPOST /metrics HTTP/1.1\r\n\r\nGET",
                b"\x00\x01garbage\r\n\r\n",
            ],
        );
    }

    #[test]
    fn tls_records_regressions() {
        replay(
            "tls_records",
            tls_records,
            &[
                b"\x00\x16\x03\x01\x00\x05hello",
                b"\x01hello over TLS\nsecond line\n",
                b"\x02damaged on the way",
                b"\x04",
                b"\x05\xff\xfe\x00 split anywhere \r\n",
                // Flips in a record's legacy version, which rustls takes or refuses.
                b"/:/5",
                b"\x7a\xe1",
            ],
        );
    }

    #[test]
    fn kv_commands_regressions() {
        replay(
            "kv_commands",
            kv_commands,
            &[
                b"\x00\x00\x00\x00\x01\x00\x07\x02\x00\x00",
                b"\xc5\x04\x01\x00\x01\x01\x30\x03\x01\x00\x45\x00\x01",
                b"\x01\x00\x00\x00\x05\x00\xff\x05\x01\xfe\x06\x00\x00\x47\x00\x00",
                &[0x3f; 90],
                &[0x80; 60],
            ],
        );
    }

    #[test]
    fn websocket_frames_regressions() {
        replay(
            "websocket_frames",
            websocket_frames,
            &[
                b"\x00GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                b"\x00hello\r\n",
                b"\x01\x81\x85abcd\x09\x07\x0f\x08\x0e",
                b"\x02\x01\x83abcd\x09\x07\x0f\x80\x80abcd\x88\x82abcd\x62\xea",
                b"\x05\x82\xffabcd",
                b"\x0b\x03\x20\x01\x07\x02\x40\x00\x00",
                &[0x7f; 200],
                &[0xfb; 100],
            ],
        );
    }

    #[test]
    fn udp_rates_regressions() {
        replay(
            "udp_rates",
            udp_rates,
            &[&[1, 0, 1, 0, 2, 63, 1, 63], &[7; 200]],
        );
    }
}
