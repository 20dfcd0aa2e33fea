//! The way down to the socket: answers are written straight to it, and what it would not
//! take is queued, in order, in a buffer that exists only while it holds something.
//!
//! Whatever the layers above make of an answer (telnet escaping, TLS records), what reaches
//! this room is the bytes for the wire, so flow control, the buffer budget and the drain
//! see one queue per connection however many layers it has.

use std::io::{self, Write};

use crate::stream::Stream;

/// Output the socket would not take yet, in order: `bytes[sent..]` is still to be sent.
/// Empty and unallocated whenever everything has gone out.
#[derive(Debug, Default)]
pub(crate) struct OutputBuffer {
    bytes: Vec<u8>,
    sent: usize,
}

impl OutputBuffer {
    pub fn pending(&self) -> usize {
        self.bytes.len() - self.sent
    }

    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Writes `answer` to the socket unless earlier output is still queued, and queues
    /// whatever the socket would not take. Returns the bytes written now.
    pub fn send(&mut self, socket: &mut Stream, answer: &[u8]) -> io::Result<usize> {
        if self.pending() > 0 {
            // Earlier output is still queued; this must wait behind it to keep the order.
            self.queue(answer);
            return Ok(0);
        }
        let sent = write_until_blocked(socket, answer)?;
        if sent < answer.len() {
            self.bytes.clear();
            self.sent = 0;
            self.bytes.extend_from_slice(&answer[sent..]);
        }
        Ok(sent)
    }

    /// Sends what is queued, as far as the socket takes it and at most `limit` bytes;
    /// releases the buffer once empty. Returns the bytes written.
    pub fn flush(&mut self, socket: &mut Stream, limit: usize) -> io::Result<usize> {
        let end = self.bytes.len().min(self.sent + limit);
        let written = write_until_blocked(socket, &self.bytes[self.sent..end])?;
        self.sent += written;
        if self.pending() == 0 && self.bytes.capacity() > 0 {
            *self = OutputBuffer::default();
        }
        Ok(written)
    }

    /// Appends `answer` behind what is queued. The buffer budget counts capacity, so the
    /// buffer grows only when it must and only by what it needs: the sent prefix is dropped
    /// first, and `Vec`'s doubling, which could take the total past the budget by as much
    /// as the buffer already holds, is not used. The sent prefix is also dropped once it is
    /// at least as long as what is pending, so each byte is moved at most once on average.
    fn queue(&mut self, answer: &[u8]) {
        let grows = self.bytes.len() + answer.len() > self.bytes.capacity();
        if self.sent > 0 && (grows || self.sent >= self.pending()) {
            self.bytes.drain(..self.sent);
            self.sent = 0;
        }
        self.bytes.reserve_exact(answer.len());
        self.bytes.extend_from_slice(answer);
    }
}

/// Writes as much of `bytes` as the socket takes before it would block; returns how much.
// Inlined by hand: on the plain echo's path it is the one write per request, and the
// compiler's choice to inline it has come and gone with unrelated changes (about 20
// instructions a request; benches/instructions.sh).
#[inline(always)]
fn write_until_blocked(socket: &mut Stream, bytes: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        match socket.write(&bytes[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer budget counts capacity: queued output grows by what it needs, after
    /// dropping what was sent, never by doubling.
    #[test]
    fn queued_output_grows_only_by_what_it_needs() {
        let read = 64 * 1024;
        let answer = vec![7u8; read];
        let mut output = OutputBuffer::default();
        let mut high = 0;
        for round in 0..64 {
            output.queue(&answer);
            high = high.max(output.capacity());
            assert!(
                output.capacity() <= output.pending() + output.sent + read,
                "round {round}: capacity {} for {} pending",
                output.capacity(),
                output.pending()
            );
            // The socket takes a little less than a read each time.
            output.sent += read - 1000;
            assert!(output.sent <= output.bytes.len());
        }
        // 64 reads queued, each all but 1,000 bytes sent: 64,000 bytes pending at the end,
        // and the buffer never held much more than that plus one read.
        assert_eq!(output.pending(), 64_000);
        assert!(high <= 64_000 + 2 * read, "high-water capacity {high}");
    }
}
