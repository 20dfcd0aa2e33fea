//! Enough of the telnet protocol (RFC 854 and its option RFCs) for the telnet clients
//! people have: pure functions over bytes, no I/O, like `line.rs`. With `--telnet` a
//! connection's input goes through a [`Telnet`] decoder before framing, and its echoes
//! through [`escape`].
//!
//! The decoder takes commands out of the stream and says what each means, and turns every
//! line end a client may send into a line end the framing knows: CR LF and CR NUL (RFC
//! 854), a bare CR (PuTTY in BINARY or character mode) and a bare LF (inetutils' telnet in
//! BINARY mode). Echoes then carry CR LF, as the NVT requires, so that the next line starts
//! at column 0 whatever the client's terminal does with a lone LF.
//!
//! Its negotiation follows RFC 1143's rules, so that it always ends, and what it agrees to
//! keeps each common client in the mode where a person sees each line once as typed and
//! once echoed:
//! - BINARY from the client is asked for and accepted: what it sends, UTF-8 typed at its
//!   keyboard included, arrives with all 8 bits. BINARY from the server is refused:
//!   inetutils' telnet (Debian's and Ubuntu's `telnet`) then turns off its terminal's
//!   output processing, and the Enter its terminal echoes moves down without returning to
//!   column 0, so that every line on screen starts where the last one ended. Clients show
//!   8-bit output as it comes without BINARY.
//! - SUPPRESS-GO-AHEAD is refused both ways. A client that has it both ways leaves its own
//!   line editing for character-at-a-time (PuTTY does so as soon as it is agreed); it then
//!   shows what is typed only if the server echoes every key, which a line echo does not.
//! - ECHO is refused for the same reason: the client echoes keys, the server echoes lines.
//! - Every other option is refused, each request answered once. `DO TIMING-MARK` is
//!   answered at once (RFC 860): a client waits for it after Ctrl-C.
//!
//! Sub-negotiations are skipped as they arrive, never stored: a doubled 255 inside one is a
//! data byte of it (RFC 855), and only IAC SE ends it.

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

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const NUL: u8 = 0;

const BINARY: u8 = 0;
const TIMING_MARK: u8 = 6;

/// A sub-negotiation this long without its end is a broken or hostile client.
pub(crate) const MAX_SUBNEGOTIATION_BYTES: usize = 64 * 1024;
/// The answer to Are You There.
const AYT_ANSWER: &[u8] = b"\r\n[kv_server: yes, here]\r\n";
/// The line end an echo carries, whatever form the client sent.
pub(crate) const LINE_END: &[u8] = b"\r\n";
/// What the server sends when a connection starts speaking telnet: DO BINARY.
pub(crate) const OFFERS: &[u8] = &[IAC, DO, BINARY];

/// What the decoder found, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Client data: these bytes of the input (an escaped 0xFF is one byte of it). CR LF
    /// within one input stays in its run of data as sent.
    Data(Range<usize>),
    /// A line ends here in another form (CR NUL, bare CR, bare LF, or a CR LF split between
    /// two inputs): the caller adds [`LINE_END`].
    LineEnd,
    /// Bytes to send back: negotiation answers, the timing mark, the AYT answer.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Iac,
    /// After IAC and a negotiation verb.
    Verb(u8),
    Subnegotiation,
    SubnegotiationIac,
}

/// One connection's telnet state: where the decoder is in the stream, and whether the
/// client sends in BINARY, the one option agreed to. A few bytes, no buffers.
#[derive(Debug)]
pub(crate) struct Telnet {
    state: State,
    /// The last data byte was a CR, already taken as a line end: an LF or NUL right after
    /// it, even at the start of the next input, belongs to that line end.
    after_cr: bool,
    subnegotiation_bytes: usize,
    client_binary: Side,
}

impl Telnet {
    /// A connection's telnet state once [`OFFERS`] are sent.
    pub fn new() -> Telnet {
        Telnet {
            state: State::Data,
            after_cr: false,
            subnegotiation_bytes: 0,
            client_binary: Side::WantYes,
        }
    }

    /// Decodes `input`, continuing from where the last call stopped, handing each piece to
    /// `on` in order; returns how many commands (IAC sequences) it held, the measure of
    /// the work beyond the bytes. Are You There is answered once per input, however often
    /// it is asked in it. An error from `on`, or a sub-negotiation too long, stops decoding.
    pub fn decode<E: From<SubnegotiationTooLong>>(
        &mut self,
        input: &[u8],
        on: &mut impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut commands = 0;
        let mut answered_ayt = false;
        let mut data_start = 0;
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Data => {
                    if std::mem::take(&mut self.after_cr) && matches!(input[at], LF | NUL) {
                        at += 1;
                        data_start = at;
                        continue;
                    }
                    // Plain data runs up to the next byte that means something; in a run
                    // of commands that is the very next byte, found without a search.
                    if input[at] != IAC {
                        let Some(found) = memchr::memchr3(IAC, CR, LF, &input[at..]) else {
                            break;
                        };
                        at += found;
                    }
                    if input[at] == CR && input.get(at + 1) == Some(&LF) {
                        at += 2;
                        continue;
                    }
                    if data_start < at {
                        on(Piece::Data(data_start..at))?;
                    }
                    match input[at] {
                        IAC => {
                            commands += 1;
                            self.state = State::Iac;
                        }
                        byte => {
                            on(Piece::LineEnd)?;
                            self.after_cr = byte == CR;
                        }
                    }
                }
                State::Iac => {
                    self.state = State::Data;
                    match input[at] {
                        // An escaped 0xFF: this second byte is the data byte.
                        IAC => on(Piece::Data(at..at + 1))?,
                        verb @ (DO | DONT | WILL | WONT) => self.state = State::Verb(verb),
                        SB => {
                            self.state = State::Subnegotiation;
                            self.subnegotiation_bytes = 0;
                        }
                        IP | AO | BRK => on(Piece::DiscardLine)?,
                        EL => on(Piece::EraseLine)?,
                        EC => on(Piece::EraseCharacter)?,
                        AYT if !answered_ayt => {
                            answered_ayt = true;
                            on(Piece::Reply(AYT_ANSWER))?;
                        }
                        // No meaning here (a second AYT in one input is answered by the
                        // first answer): skipped.
                        NOP | GA | DM | SE | AYT => {}
                        _ => {} // Unassigned commands carry no meaning: skipped.
                    }
                }
                State::Verb(verb) => {
                    self.state = State::Data;
                    if let Some(reply) = self.negotiate(verb, input[at]) {
                        on(Piece::Reply(&reply))?;
                    }
                }
                State::Subnegotiation => {
                    // Its body up to the next IAC is skipped in one step.
                    let body = memchr::memchr(IAC, &input[at..]).unwrap_or(input.len() - at);
                    self.subnegotiation_bytes += body;
                    at += body;
                    if at < input.len() {
                        self.state = State::SubnegotiationIac;
                    }
                    if self.subnegotiation_bytes > MAX_SUBNEGOTIATION_BYTES {
                        return Err(SubnegotiationTooLong.into());
                    }
                }
                State::SubnegotiationIac => match input[at] {
                    SE => self.state = State::Data,
                    // A doubled 255 is one byte of the sub-negotiation's data.
                    IAC => {
                        self.subnegotiation_bytes += 1;
                        self.state = State::Subnegotiation;
                    }
                    // Any other command means the end was lost: it ends the
                    // sub-negotiation and is itself obeyed, as BSD's telnetd does.
                    _ => {
                        self.state = State::Iac;
                        continue;
                    }
                },
            }
            at += 1;
            data_start = at;
        }
        if self.state == State::Data && data_start < input.len() {
            on(Piece::Data(data_start..input.len()))?;
        }
        Ok(commands)
    }

    /// Answers one negotiation (RFC 1143): at most one reply, and only for a change.
    fn negotiate(&mut self, verb: u8, option: u8) -> Option<[u8; 3]> {
        let say = |verb| Some([IAC, verb, option]);
        match (verb, option) {
            (WILL | WONT, BINARY) => {
                let enabled = verb == WILL;
                let before = std::mem::replace(
                    &mut self.client_binary,
                    if enabled { Side::Yes } else { Side::No },
                );
                // A request that agrees with the state, or answers our own offer, needs
                // no reply.
                let changes = match before {
                    Side::No => enabled,
                    Side::Yes => !enabled,
                    Side::WantYes => false,
                };
                match changes {
                    true if enabled => say(DO),
                    true => say(DONT),
                    false => None,
                }
            }
            (DO, TIMING_MARK) => say(WILL),
            // Everything else stays off on both sides: refuse an offer or a request, and
            // ignore a request to keep off what is off.
            (DO, _) => say(WONT),
            (WILL, _) => say(DONT),
            _ => None,
        }
    }
}

/// What the telnet layer hands up, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Up<'a> {
    /// Client data, line ends in any form already made [`LINE_END`].
    Data(&'a [u8]),
    /// Bytes of the layer's own to send: offers, negotiation answers, the AYT answer.
    Reply(&'a [u8]),
    /// The unfinished line is to be dropped (Erase Line, Interrupt Process, Abort Output,
    /// Break).
    EraseLine,
    /// The unfinished line's last character is to be dropped.
    EraseCharacter,
}

/// The telnet layer of a connection served with `--telnet`: between the bytes from below
/// (the socket, or TLS) and the line framing. A few bytes of decoder state and no buffers:
/// nothing of one read is kept for the next.
pub(crate) struct TelnetLayer {
    decoder: Telnet,
    /// The offers wait for the PROXY header: they go out with the first answers after it.
    offers_owed: bool,
}

impl TelnetLayer {
    /// The layer of a new connection; its offers go out at once (see [`OFFERS`]) unless
    /// they are `owed` until the first bytes after a PROXY header: the balancer is not a
    /// telnet client.
    pub fn new(owed: bool) -> Self {
        TelnetLayer {
            decoder: Telnet::new(),
            offers_owed: owed,
        }
    }

    /// Decodes what came from below and hands it `up` in order, the owed offers first;
    /// returns how many commands it held.
    pub fn receive<E: From<SubnegotiationTooLong>>(
        &mut self,
        arrived: &[u8],
        up: &mut impl FnMut(Up<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        if std::mem::take(&mut self.offers_owed) {
            up(Up::Reply(OFFERS))?;
        }
        self.decoder.decode(arrived, &mut |piece| match piece {
            Piece::Data(range) => up(Up::Data(&arrived[range])),
            Piece::LineEnd => up(Up::Data(LINE_END)),
            Piece::Reply(bytes) => up(Up::Reply(bytes)),
            Piece::DiscardLine | Piece::EraseLine => up(Up::EraseLine),
            Piece::EraseCharacter => up(Up::EraseCharacter),
        })
    }
}

/// Whether a connection's first bytes are telnet negotiation (IAC WILL, WONT, DO or DONT),
/// as PuTTY and other clients send before anything is typed.
pub(crate) fn opens_negotiation(first: &[u8]) -> bool {
    matches!(first, [IAC, WILL | WONT | DO | DONT, ..])
}

/// `bytes` as telnet data, appended to `into`: every 0xFF doubled (IAC IAC).
pub(crate) fn escape_into(bytes: &[u8], into: &mut Vec<u8>) {
    let mut rest = bytes;
    while let Some(at) = memchr::memchr(IAC, rest) {
        into.extend_from_slice(&rest[..=at]);
        into.push(IAC);
        rest = &rest[at + 1..];
    }
    into.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What decoding produced: the data with every line end as [`LINE_END`], and every
    /// other piece in order.
    #[derive(Debug, Default, PartialEq)]
    struct Decoded {
        data: Vec<u8>,
        other: Vec<String>,
    }

    #[derive(Debug, PartialEq)]
    struct TooLong;
    impl From<SubnegotiationTooLong> for TooLong {
        fn from(_: SubnegotiationTooLong) -> Self {
            TooLong
        }
    }

    /// Decodes `chunks` one after another.
    fn run(telnet: &mut Telnet, chunks: &[&[u8]]) -> Decoded {
        let mut decoded = Decoded::default();
        for chunk in chunks {
            telnet
                .decode::<TooLong>(chunk, &mut |piece| {
                    match piece {
                        Piece::Data(range) => decoded.data.extend_from_slice(&chunk[range]),
                        Piece::LineEnd => decoded.data.extend_from_slice(LINE_END),
                        Piece::Reply(bytes) => decoded.other.push(format!("reply {bytes:?}")),
                        piece => decoded.other.push(format!("{piece:?}")),
                    }
                    Ok(())
                })
                .unwrap();
        }
        decoded
    }

    fn reply(bytes: &[u8]) -> String {
        format!("reply {bytes:?}")
    }

    #[test]
    fn ctrl_c_as_telnet_sends_it_discards_the_line_and_gets_its_timing_mark() {
        let decoded = run(
            &mut Telnet::new(),
            &[b"half a li", &[IAC, IP, IAC, DO, TIMING_MARK], b"next\r\n"],
        );
        assert_eq!(decoded.data, b"half a linext\r\n".to_vec());
        assert_eq!(
            decoded.other,
            vec!["DiscardLine".to_owned(), reply(&[IAC, WILL, TIMING_MARK])]
        );
    }

    #[test]
    fn negotiation_ends_and_refuses_what_it_does_not_support() {
        let mut telnet = Telnet::new();
        assert_eq!(OFFERS, [IAC, DO, BINARY]);
        // The client agrees to send BINARY: no further answer.
        assert!(run(&mut telnet, &[&[IAC, WILL, BINARY]]).other.is_empty());
        // BINARY from the server, SUPPRESS-GO-AHEAD both ways, ECHO and terminal type are
        // refused, each request once.
        let decoded = run(
            &mut telnet,
            &[&[
                IAC, DO, BINARY, IAC, DO, 3, IAC, WILL, 3, IAC, DO, 1, IAC, WILL, 24,
            ]],
        );
        assert_eq!(
            decoded.other,
            vec![
                reply(&[IAC, WONT, BINARY]),
                reply(&[IAC, WONT, 3]),
                reply(&[IAC, DONT, 3]),
                reply(&[IAC, WONT, 1]),
                reply(&[IAC, DONT, 24]),
            ]
        );
        // Asked to keep off what is off: no answer.
        assert!(run(&mut telnet, &[&[IAC, DONT, 3, IAC, WONT, 24]])
            .other
            .is_empty());
        // The client stops BINARY: acknowledged once; again, not at all; resumed, agreed.
        let decoded = run(&mut telnet, &[&[IAC, WONT, BINARY, IAC, WONT, BINARY]]);
        assert_eq!(decoded.other, vec![reply(&[IAC, DONT, BINARY])]);
        let decoded = run(&mut telnet, &[&[IAC, WILL, BINARY, IAC, WILL, BINARY]]);
        assert_eq!(decoded.other, vec![reply(&[IAC, DO, BINARY])]);
    }

    /// PuTTY opens with all of these before anything is typed.
    #[test]
    fn puttys_opening_offers_get_one_answer_each() {
        const NAWS: u8 = 31;
        const TSPEED: u8 = 32;
        const TTYPE: u8 = 24;
        const NEW_ENVIRON: u8 = 39;
        let opening = [
            IAC,
            WILL,
            NAWS,
            IAC,
            WILL,
            TSPEED,
            IAC,
            WILL,
            TTYPE,
            IAC,
            WILL,
            NEW_ENVIRON,
            IAC,
            DO,
            1,
            IAC,
            WILL,
            3,
            IAC,
            DO,
            3,
            IAC,
            DO,
            BINARY,
            IAC,
            WILL,
            BINARY,
        ];
        let decoded = run(&mut Telnet::new(), &[&opening]);
        assert_eq!(
            decoded.other,
            vec![
                reply(&[IAC, DONT, NAWS]),
                reply(&[IAC, DONT, TSPEED]),
                reply(&[IAC, DONT, TTYPE]),
                reply(&[IAC, DONT, NEW_ENVIRON]),
                reply(&[IAC, WONT, 1]),
                reply(&[IAC, DONT, 3]),
                reply(&[IAC, WONT, 3]),
                reply(&[IAC, WONT, BINARY]),
            ]
        );
    }

    #[test]
    fn every_nvt_line_end_ends_a_line_once() {
        for (sent, wanted) in [
            (&b"a\r\nb\r\n"[..], &b"a\r\nb\r\n"[..]),
            (b"a\r\0b\r\0", b"a\r\nb\r\n"),
            (b"a\rb\r", b"a\r\nb\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n"),
            (b"\r\r\n\n", b"\r\n\r\n\r\n"),
        ] {
            assert_eq!(run(&mut Telnet::new(), &[sent]).data, wanted, "{sent:?}");
        }
        // A CR that ends one read and an LF or NUL that begins the next make one line end.
        for next in [&b"\nb"[..], b"\0b"] {
            let decoded = run(&mut Telnet::new(), &[b"a\r", next]);
            assert_eq!(decoded.data, b"a\r\nb".to_vec());
        }
    }

    #[test]
    fn subnegotiations_are_skipped_and_bounded() {
        let decoded = run(
            &mut Telnet::new(),
            &[b"a", &[IAC, SB, 24, 0, b'x', IAC, IAC, b'y', IAC, SE], b"b"],
        );
        assert_eq!(decoded.data, b"ab".to_vec());
        let mut start = vec![IAC, SB, 24];
        start.extend_from_slice(&vec![7u8; MAX_SUBNEGOTIATION_BYTES + 10]);
        let result = Telnet::new().decode::<TooLong>(&start, &mut |_| Ok(()));
        assert_eq!(result, Err(TooLong));
    }

    /// RFC 855: IAC IAC inside a sub-negotiation is a data byte of it, even right before
    /// SE, so `IAC IAC SE` does not end it.
    #[test]
    fn a_doubled_255_in_a_subnegotiation_does_not_end_it() {
        let stream = b"\xff\xfa\x18\xff\xff\xf0leak\r\n\xff\xf0ok\r\n";
        assert_eq!(run(&mut Telnet::new(), &[stream]).data, b"ok\r\n".to_vec());
    }

    /// A sub-negotiation whose end was lost ends at the next command, which is obeyed.
    #[test]
    fn a_command_inside_a_subnegotiation_ends_it() {
        let stream = [IAC, SB, 24, 1, IAC, DO, TIMING_MARK, b'o', b'k'];
        let decoded = run(&mut Telnet::new(), &[&stream]);
        assert_eq!(decoded.data, b"ok".to_vec());
        assert_eq!(decoded.other, vec![reply(&[IAC, WILL, TIMING_MARK])]);
    }

    #[test]
    fn are_you_there_is_answered_once_per_input() {
        let many: Vec<u8> = [IAC, AYT].repeat(1000);
        let decoded = run(&mut Telnet::new(), &[&many, &many]);
        assert_eq!(decoded.other, vec![reply(AYT_ANSWER), reply(AYT_ANSWER)]);
    }

    #[test]
    fn escaping_doubles_iac() {
        let mut escaped = Vec::new();
        escape_into(b"plain", &mut escaped);
        escape_into(&[1, IAC, 2, IAC], &mut escaped);
        assert_eq!(escaped, b"plain\x01\xff\xff\x02\xff\xff".to_vec());
    }

    #[test]
    fn a_telnet_opening_is_recognised() {
        assert!(opens_negotiation(&[IAC, WILL, 31, IAC]));
        assert!(opens_negotiation(&[IAC, DONT, 1]));
        assert!(!opens_negotiation(&[IAC]));
        assert!(!opens_negotiation(&[IAC, IAC, b'x']));
        assert!(!opens_negotiation(b"hello"));
    }

    /// A command or negotiation that carries no data. Sub-negotiation bodies may hold 0xFF,
    /// doubled as RFC 855 requires.
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
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(|body| {
                let mut sb = vec![IAC, SB, 24];
                escape_into(&body, &mut sb);
                sb.extend([IAC, SE]);
                sb
            }),
        ]
    }

    /// Line ends in every NVT form, and what each becomes.
    fn line_end() -> impl Strategy<Value = &'static [u8]> {
        prop_oneof![
            Just(&b"\r\n"[..]),
            Just(&b"\r\0"[..]),
            Just(&b"\r"[..]),
            Just(&b"\n"[..]),
        ]
    }

    /// `stream` cut at the given points.
    fn split<'a>(stream: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for point in points {
            chunks.push(&stream[last..point]);
            last = point;
        }
        chunks.push(&stream[last..]);
        chunks
    }

    proptest! {
        #[test]
        fn any_data_with_commands_split_anywhere_comes_out_as_the_data_alone(
            parts in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>().prop_filter("no line end", |b| *b != b'\r' && *b != b'\n'), 0..40),
                 command(),
                 proptest::option::of(line_end())), 0..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut stream = Vec::new();
            let mut data = Vec::new();
            for (bytes, command, end) in &parts {
                data.extend_from_slice(bytes);
                escape_into(bytes, &mut stream);
                if let Some(end) = end {
                    data.extend_from_slice(LINE_END);
                    stream.extend_from_slice(end);
                }
                // The command comes between a line end and the next data: a NUL or LF of
                // data right after a bare CR would rightly be taken as part of its line end.
                stream.extend_from_slice(command);
            }
            let chunks = split(&stream, &cuts);
            let decoded = run(&mut Telnet::new(), &chunks);
            prop_assert_eq!(&decoded.data, &data);
            // The same pieces whatever the split, apart from Are You There, answered once
            // per input.
            let whole = run(&mut Telnet::new(), &[&stream]);
            let without_ayt = |other: &[String]| -> Vec<String> {
                other.iter().filter(|o| **o != reply(AYT_ANSWER)).cloned().collect()
            };
            prop_assert_eq!(without_ayt(&decoded.other), without_ayt(&whole.other));
            // At most one answer per negotiation received, and one per AYT.
            let negotiations = parts.iter().filter(|(_, c, _)| c.len() == 3 && c[1] != SB).count();
            let ayts = parts.iter().filter(|(_, c, _)| c == &vec![IAC, AYT]).count();
            let replies = decoded.other.iter().filter(|o| o.starts_with("reply")).count();
            prop_assert!(replies <= negotiations + ayts, "{:?}", decoded.other);
        }

        /// Every NVT line end, with data around it, split at every point.
        #[test]
        fn each_line_end_form_split_at_every_point_ends_one_line(
            before in proptest::collection::vec(b'a'..=b'z', 0..4),
            end in line_end(),
            after in proptest::collection::vec(b'a'..=b'z', 0..4),
        ) {
            let mut stream = before.clone();
            stream.extend_from_slice(end);
            stream.extend_from_slice(&after);
            let mut wanted = before.clone();
            wanted.extend_from_slice(LINE_END);
            wanted.extend_from_slice(&after);
            for cut in 0..=stream.len() {
                let decoded = run(&mut Telnet::new(), &[&stream[..cut], &stream[cut..]]);
                prop_assert_eq!(&decoded.data, &wanted, "cut at {}", cut);
            }
        }
    }
}
