//! Enough of the telnet protocol (RFC 854 and its option RFCs) for a stock telnet client:
//! pure functions over bytes, no I/O, like `line.rs`. With `--telnet` a connection's input
//! goes through a [`Telnet`] decoder before framing, and its echoes through [`escape`].
//!
//! The decoder takes commands out of the stream and says what each means; its negotiation
//! follows RFC 1143's rules, so that it always ends: BINARY is offered and accepted both
//! ways (8-bit text such as UTF-8 then passes untouched), SUPPRESS-GO-AHEAD is accepted both
//! ways but not offered (a stock client takes the server's SGA as its cue to leave line
//! mode for character-at-a-time, where its Enter no longer ends a line), every other option
//! is refused, and `DO TIMING-MARK` is answered at once (RFC 860), which is what a client
//! waits for after Ctrl-C. Sub-negotiations are skipped as they arrive, never stored.

use std::ops::Range;

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const GA: u8 = 249;
const EL: u8 = 248;
const EC: u8 = 247;
const AYT: u8 = 246;
const AO: u8 = 245;
const IP: u8 = 244;
const BRK: u8 = 243;
const DM: u8 = 242;
const NOP: u8 = 241;
const SE: u8 = 240;

const BINARY: u8 = 0;
const SUPPRESS_GO_AHEAD: u8 = 3;
const TIMING_MARK: u8 = 6;

/// The options this server takes part in, both ways.
const SUPPORTED: [u8; 2] = [BINARY, SUPPRESS_GO_AHEAD];
/// A sub-negotiation this long without its end is a broken or hostile client.
pub(crate) const MAX_SUBNEGOTIATION_BYTES: usize = 64 * 1024;
/// The answer to Are You There.
const AYT_ANSWER: &[u8] = b"\r\n[kv_server: yes, here]\r\n";

/// What the decoder found, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Client data: these bytes of the input (an escaped 0xFF is one byte of it).
    Data(Range<usize>),
    /// Bytes to send back now: negotiation answers, the timing mark, the AYT answer.
    Reply(&'a [u8]),
    /// Interrupt Process, Abort Output or Break: the unfinished line is discarded.
    DiscardLine,
    /// Erase Line.
    EraseLine,
    /// Erase Character.
    EraseCharacter,
}

/// A sub-negotiation ran past [`MAX_SUBNEGOTIATION_BYTES`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SubnegotiationTooLong;

/// RFC 1143's view of one side of one option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    No,
    Yes,
    /// We asked for it to be enabled and wait for the answer.
    WantYes,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Data,
    Iac,
    /// After IAC and a negotiation verb.
    Verb(u8),
    Subnegotiation,
    SubnegotiationIac,
}

/// One connection's telnet state: where the decoder is in the stream, and each supported
/// option's state on our side (`us`) and the client's (`him`).
#[derive(Debug)]
pub(crate) struct Telnet {
    state: State,
    subnegotiation_bytes: usize,
    us: [Side; 2],
    him: [Side; 2],
    reply: Vec<u8>,
}

impl Telnet {
    /// A connection's telnet state, and the offers to send it at once: WILL and DO
    /// BINARY.
    pub fn new() -> (Telnet, Vec<u8>) {
        let offers = vec![IAC, WILL, BINARY, IAC, DO, BINARY];
        let telnet = Telnet {
            state: State::Data,
            subnegotiation_bytes: 0,
            us: [Side::WantYes, Side::No],
            him: [Side::WantYes, Side::No],
            reply: Vec::new(),
        };
        (telnet, offers)
    }

    /// Decodes `input`, continuing from where the last call stopped, handing each piece to
    /// `on` in order. An error from `on` stops decoding and is returned.
    pub fn decode<E>(
        &mut self,
        input: &[u8],
        on: &mut impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<Result<(), SubnegotiationTooLong>, E> {
        let mut data_start = 0;
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            match self.state {
                State::Data => {
                    if byte == IAC {
                        if data_start < at {
                            on(Piece::Data(data_start..at))?;
                        }
                        self.state = State::Iac;
                    }
                }
                State::Iac => {
                    self.state = State::Data;
                    match byte {
                        // An escaped 0xFF: this second byte is the data byte.
                        IAC => {
                            on(Piece::Data(at..at + 1))?;
                        }
                        DO | DONT | WILL | WONT => self.state = State::Verb(byte),
                        SB => {
                            self.state = State::Subnegotiation;
                            self.subnegotiation_bytes = 0;
                        }
                        IP | AO | BRK => on(Piece::DiscardLine)?,
                        EL => on(Piece::EraseLine)?,
                        EC => on(Piece::EraseCharacter)?,
                        AYT => on(Piece::Reply(AYT_ANSWER))?,
                        NOP | GA | DM | SE => {}
                        _ => {} // Unassigned commands carry no meaning: skipped.
                    }
                    data_start = at + 1;
                }
                State::Verb(verb) => {
                    self.state = State::Data;
                    self.negotiate(verb, byte);
                    if !self.reply.is_empty() {
                        let reply = std::mem::take(&mut self.reply);
                        on(Piece::Reply(&reply))?;
                        self.reply = reply;
                        self.reply.clear();
                    }
                    data_start = at + 1;
                }
                State::Subnegotiation | State::SubnegotiationIac => {
                    self.subnegotiation_bytes += 1;
                    if self.subnegotiation_bytes > MAX_SUBNEGOTIATION_BYTES {
                        return Ok(Err(SubnegotiationTooLong));
                    }
                    self.state = match (self.state, byte) {
                        (State::SubnegotiationIac, SE) => State::Data,
                        (_, IAC) => State::SubnegotiationIac,
                        _ => State::Subnegotiation,
                    };
                    data_start = at + 1;
                }
            }
            at += 1;
        }
        if matches!(self.state, State::Data) && data_start < input.len() {
            on(Piece::Data(data_start..input.len()))?;
        }
        Ok(Ok(()))
    }

    /// Answers one negotiation (RFC 1143): at most one reply, and only for a change.
    fn negotiate(&mut self, verb: u8, option: u8) {
        let index = SUPPORTED.iter().position(|&o| o == option);
        match (verb, index) {
            (DO, _) if option == TIMING_MARK => self.say(WILL, option),
            (DO, Some(i)) => {
                if self.us[i] == Side::No {
                    self.say(WILL, option);
                }
                self.us[i] = Side::Yes;
            }
            (DONT, Some(i)) => {
                if self.us[i] == Side::Yes {
                    self.say(WONT, option);
                }
                self.us[i] = Side::No;
            }
            (WILL, Some(i)) => {
                if self.him[i] == Side::No {
                    self.say(DO, option);
                }
                self.him[i] = Side::Yes;
            }
            (WONT, Some(i)) => {
                if self.him[i] == Side::Yes {
                    self.say(DONT, option);
                }
                self.him[i] = Side::No;
            }
            // Unsupported options stay off: refuse an offer or a request, ignore the rest.
            (DO, None) => self.say(WONT, option),
            (WILL, None) => self.say(DONT, option),
            _ => {}
        }
    }

    fn say(&mut self, verb: u8, option: u8) {
        self.reply.extend_from_slice(&[IAC, verb, option]);
    }
}

/// `bytes` as telnet data: every 0xFF doubled (IAC IAC). Borrowed when there is none.
pub(crate) fn escape<'a>(bytes: &'a [u8], into: &'a mut Vec<u8>) -> &'a [u8] {
    if memchr::memchr(IAC, bytes).is_none() {
        return bytes;
    }
    into.clear();
    for &byte in bytes {
        into.push(byte);
        if byte == IAC {
            into.push(IAC);
        }
    }
    into
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `chunks` one after another: the data, and everything else in order.
    fn run(telnet: &mut Telnet, chunks: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
        let mut data = Vec::new();
        let mut other = Vec::new();
        for chunk in chunks {
            telnet
                .decode::<()>(chunk, &mut |piece| {
                    match piece {
                        Piece::Data(range) => data.extend_from_slice(&chunk[range]),
                        Piece::Reply(bytes) => other.push(format!("reply {bytes:?}")),
                        piece => other.push(format!("{piece:?}")),
                    }
                    Ok(())
                })
                .unwrap()
                .unwrap();
        }
        (data, other)
    }

    #[test]
    fn ctrl_c_as_telnet_sends_it_discards_the_line_and_gets_its_timing_mark() {
        let (mut telnet, _) = Telnet::new();
        let (data, other) = run(
            &mut telnet,
            &[b"half a li", &[IAC, IP, IAC, DO, TIMING_MARK], b"next\r\n"],
        );
        assert_eq!(data, b"half a linext\r\n".to_vec());
        assert_eq!(
            other,
            vec![
                "DiscardLine".to_owned(),
                format!("reply {:?}", [IAC, WILL, TIMING_MARK])
            ]
        );
    }

    #[test]
    fn negotiation_ends_and_refuses_what_it_does_not_support() {
        let (mut telnet, offers) = Telnet::new();
        assert_eq!(offers, vec![IAC, WILL, 0, IAC, DO, 0]);
        // The client agrees to what was offered: no further answers.
        let (_, other) = run(&mut telnet, &[&[IAC, DO, 0, IAC, WILL, 0]]);
        assert!(other.is_empty(), "{other:?}");
        // It asks for SUPPRESS-GO-AHEAD both ways: accepted, once.
        let (_, other) = run(&mut telnet, &[&[IAC, DO, 3, IAC, WILL, 3]]);
        assert_eq!(
            other,
            vec![
                format!("reply {:?}", [IAC, WILL, 3]),
                format!("reply {:?}", [IAC, DO, 3])
            ]
        );
        // Asked again: still no answer, the state did not change.
        let (_, other) = run(&mut telnet, &[&[IAC, DO, 0, IAC, WILL, 3]]);
        assert!(other.is_empty(), "{other:?}");
        // ECHO (1) and terminal type (24) are refused, once per request.
        let (_, other) = run(&mut telnet, &[&[IAC, DO, 1, IAC, WILL, 24]]);
        assert_eq!(
            other,
            vec![
                format!("reply {:?}", [IAC, WONT, 1]),
                format!("reply {:?}", [IAC, DONT, 24])
            ]
        );
        // Turning BINARY off is acknowledged once; again, not at all.
        let (_, other) = run(&mut telnet, &[&[IAC, DONT, 0, IAC, DONT, 0]]);
        assert_eq!(other, vec![format!("reply {:?}", [IAC, WONT, 0])]);
    }

    #[test]
    fn subnegotiations_are_skipped_and_bounded() {
        let (mut telnet, _) = Telnet::new();
        let (data, _) = run(
            &mut telnet,
            &[b"a", &[IAC, SB, 24, 0, b'x', IAC, IAC, b'y', IAC, SE], b"b"],
        );
        assert_eq!(data, b"ab".to_vec());
        let (mut telnet, _) = Telnet::new();
        let endless = vec![7u8; MAX_SUBNEGOTIATION_BYTES + 10];
        let mut start = vec![IAC, SB, 24];
        start.extend_from_slice(&endless);
        let result = telnet.decode::<()>(&start, &mut |_| Ok(())).unwrap();
        assert_eq!(result, Err(SubnegotiationTooLong));
    }

    #[test]
    fn escaping_doubles_iac_only_when_there_is_one() {
        let mut buffer = Vec::new();
        assert_eq!(escape(b"plain", &mut buffer), b"plain");
        assert_eq!(escape(&[1, IAC, 2], &mut buffer), &[1, IAC, IAC, 2]);
    }

    /// A command or negotiation that carries no data and, once negotiation has settled,
    /// asks for no answer that would change anything.
    fn command() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(vec![IAC, NOP]),
            Just(vec![IAC, GA]),
            Just(vec![IAC, DM]),
            Just(vec![IAC, DO, TIMING_MARK]),
            Just(vec![IAC, AYT]),
            (0u8..40).prop_map(|option| vec![IAC, DO, option]),
            (0u8..40).prop_map(|option| vec![IAC, WILL, option]),
            (0u8..40).prop_map(|option| vec![IAC, WONT, option]),
            (0u8..40).prop_map(|option| vec![IAC, DONT, option]),
            proptest::collection::vec(0u8..=254, 0..20).prop_map(|body| {
                let mut sb = vec![IAC, SB, 24];
                sb.extend(body);
                sb.extend([IAC, SE]);
                sb
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_data_with_commands_split_anywhere_comes_out_as_the_data_alone(
            parts in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40), command()), 0..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut stream = Vec::new();
            let mut data = Vec::new();
            for (bytes, command) in &parts {
                data.extend_from_slice(bytes);
                let mut escaped = Vec::new();
                stream.extend_from_slice(escape(bytes, &mut escaped));
                stream.extend_from_slice(command);
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for point in points {
                chunks.push(&stream[last..point]);
                last = point;
            }
            chunks.push(&stream[last..]);
            let (mut telnet, _) = Telnet::new();
            let (decoded, other) = run(&mut telnet, &chunks);
            prop_assert_eq!(decoded, data);
            // At most one answer per negotiation received, and no two identical answers
            // about a supported option in a row (no loops).
            let negotiations = parts.iter().filter(|(_, c)| c.len() == 3 && c[1] != SB).count();
            let replies = other.iter().filter(|o| o.starts_with("reply")).count();
            let ayts = parts.iter().filter(|(_, c)| c == &vec![IAC, AYT]).count();
            prop_assert!(replies <= negotiations + ayts, "{:?}", other);
        }
    }
}
