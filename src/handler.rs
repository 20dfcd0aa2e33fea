//! The line handler: what the server answers to the lines a client sends.
//!
//! It exists so that the reactor never needs to know what the protocol is. Echo is the
//! default, as in the guide's "Task and gen_tcp" chapter; the guide's next chapter (parsing
//! commands) plugs in here without touching the reactor or the connection code.

/// Answers the lines of one client.
///
/// The reactor calls [`LineHandler::respond`] with `lines`, which is either a run of one or
/// more complete lines, each ending in `\n`, or one piece of a line longer than the
/// server's line limit (at most that many bytes; the last piece of such a line ends with its
/// `\n`). The bytes are opaque: any byte value may appear, `\r\n` is kept as sent.
///
/// The answer is the returned slice: either `lines` itself, which lets echo answer a whole
/// read without copying a byte, or bytes written into `scratch`, a buffer the reactor owns,
/// empties before each call and keeps between calls so that answering allocates nothing in
/// steady state.
///
/// A panic inside `respond` is caught by the reactor and ends that client's connection
/// alone, logged at error level with its address; every other client carries on. The handler
/// is shared by all connections of a server (the reactor is single-threaded), so any state
/// it keeps is shared state.
pub trait LineHandler: Send {
    /// Answers `lines`; see the trait documentation for what `lines` holds.
    fn respond<'a>(&mut self, lines: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8];

    /// Answers `lines` when they begin with the rest of a line longer than the line limit,
    /// whose first piece went to [`LineHandler::respond`]: up to its first `\n`, or the whole
    /// of `lines` if it has none, they continue that line. A handler that answers a line as
    /// a whole (a command) knows from this that those bytes are not a line of their own;
    /// by default they are answered as any others.
    fn respond_continued<'a>(&mut self, lines: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
        self.respond(lines, scratch)
    }
}

/// The guide's `KVServer` handler: every line comes back exactly as it was sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl LineHandler for Echo {
    fn respond<'a>(&mut self, lines: &'a [u8], _scratch: &'a mut Vec<u8>) -> &'a [u8] {
        lines
    }
}
