//! Line framing: turns the bytes of successive reads into the pieces a handler answers.
//!
//! Pure functions over bytes, with no I/O, so that the framing rules can be property-tested
//! on their own. The reactor reads into one shared buffer; this module decides which part of
//! that buffer is answered straight away (complete lines) and which part must be kept in the
//! connection's own `partial` buffer (the unfinished tail line).
//!
//! The rules, for a line limit `max`:
//! - A run of complete lines (each ending in `\n`, each at most `max` bytes) is handed on in
//!   one piece, however many lines it holds: echo answers a whole read with one write.
//! - A line longer than `max` is handed on in pieces of exactly `max` bytes, cut from the
//!   start of the line, as the bytes arrive; its last piece ends with the `\n`. Where a long
//!   line is cut does not depend on how the stream was split into reads.
//! - The unfinished tail kept between reads is always shorter than `max`, and the buffer
//!   holding it never grows past `max` bytes of capacity (the buffer budget counts capacity).

use memchr::{memchr, memchr_iter, memrchr};

/// Frames `data`, the bytes of one read, continuing the unfinished line in `partial`.
///
/// `emit` is called for each piece in stream order; concatenated, the pieces and the new
/// contents of `partial` are exactly the old `partial` followed by `data`. An error from
/// `emit` stops framing at once and is returned; the bytes not yet handed on are dropped,
/// which is right because the caller closes the connection on error.
pub fn frame<E>(
    partial: &mut Vec<u8>,
    data: &[u8],
    max: usize,
    emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let result = frame_read(partial, data, max, emit);
    if partial.is_empty() && partial.capacity() > 0 {
        release(partial);
    }
    result
}

fn frame_read<E>(
    partial: &mut Vec<u8>,
    data: &[u8],
    max: usize,
    emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    debug_assert!(max > 0, "line limit must be at least one byte");
    let mut rest = data;
    if !partial.is_empty() {
        let Some(newline) = memchr(b'\n', rest) else {
            return extend_bounded(partial, rest, max, emit);
        };
        let (line_end, after) = rest.split_at(newline + 1);
        extend_bounded(partial, line_end, max, emit)?;
        // The line is complete now, so whatever of it the limit did not cut goes out too.
        if !partial.is_empty() {
            emit(partial)?;
            partial.clear();
        }
        rest = after;
    }
    let tail = match memrchr(b'\n', rest) {
        Some(last_newline) => {
            let (complete, tail) = rest.split_at(last_newline + 1);
            emit_complete(complete, max, emit)?;
            tail
        }
        None => rest,
    };
    // A read that ends at a line end, the usual request, leaves nothing to keep: no call.
    if tail.is_empty() {
        return Ok(());
    }
    extend_bounded(partial, tail, max, emit)
}

/// Hands on the unfinished tail when the stream ends: the client half-closed with a line
/// pending, and every byte it sent must still come back.
pub fn finish<E>(
    partial: &mut Vec<u8>,
    emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    if partial.is_empty() {
        return Ok(());
    }
    let result = emit(partial);
    release(partial);
    result
}

/// Drops the buffer's heap allocation: a connection with nothing pending owns no buffers.
fn release(buffer: &mut Vec<u8>) {
    *buffer = Vec::new();
}

/// Makes room for `more` bytes as a `Vec` would, doubling, but never past `max` bytes of
/// capacity: the unfinished line (or a WebSocket request) never holds more, and doubling
/// past it would count twice its size against the buffer budget.
pub(crate) fn reserve_within(partial: &mut Vec<u8>, more: usize, max: usize) {
    let needed = partial.len() + more;
    if needed > partial.capacity() {
        let capacity = (partial.capacity() * 2).max(needed).min(max);
        partial.reserve_exact(capacity - partial.len());
    }
}

/// Hands on a run of complete lines, cutting out any line longer than `max`.
fn emit_complete<E>(
    complete: &[u8],
    max: usize,
    emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    // No line can be longer than the whole run: the common case costs no scan at all.
    if complete.len() <= max {
        return emit(complete);
    }
    let mut run_start = 0;
    let mut line_start = 0;
    for newline in memchr_iter(b'\n', complete) {
        let line_end = newline + 1;
        if line_end - line_start > max {
            if run_start < line_start {
                emit(&complete[run_start..line_start])?;
            }
            for piece in complete[line_start..line_end].chunks(max) {
                emit(piece)?;
            }
            run_start = line_end;
        }
        line_start = line_end;
    }
    if run_start < complete.len() {
        emit(&complete[run_start..])?;
    }
    Ok(())
}

/// Appends `bytes` (which hold no `\n`, or end with the line's only one) to the unfinished
/// line, handing on a piece each time the line reaches `max` bytes.
fn extend_bounded<E>(
    partial: &mut Vec<u8>,
    mut bytes: &[u8],
    max: usize,
    emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    loop {
        let room = max - partial.len();
        if bytes.len() < room {
            if !bytes.is_empty() {
                reserve_within(partial, bytes.len(), max);
                partial.extend_from_slice(bytes);
            }
            return Ok(());
        }
        let (piece, after) = bytes.split_at(room);
        if partial.is_empty() {
            // Nothing held yet: the piece goes out straight from the read buffer, uncopied.
            emit(piece)?;
        } else {
            reserve_within(partial, piece.len(), max);
            partial.extend_from_slice(piece);
            emit(partial)?;
            partial.clear();
        }
        bytes = after;
    }
}
