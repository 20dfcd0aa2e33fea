//! The guide's command grammar: a line split into words as Elixir's `String.split/1` splits
//! it, then matched exactly and case-sensitively against the five commands.
//!
//! Pure functions over bytes, no state and no I/O, so that the rules can be property-tested
//! on their own (against a reference built on Rust's own Unicode tables) and fuzzed. The
//! words borrow from the line: parsing allocates nothing.

/// One line, understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    Create {
        bucket: &'a [u8],
    },
    Put {
        bucket: &'a [u8],
        key: &'a [u8],
        value: &'a [u8],
    },
    Get {
        bucket: &'a [u8],
        key: &'a [u8],
    },
    Delete {
        bucket: &'a [u8],
        key: &'a [u8],
    },
    Subscribe {
        bucket: &'a [u8],
    },
    /// Any other word, a wrong number of words, or none.
    Unknown,
}

/// The most words any command has.
const MOST_WORDS: usize = 4;

/// Reads one line (its line end included or not: it is whitespace).
pub(crate) fn parse(line: &[u8]) -> Command<'_> {
    let mut words: [&[u8]; MOST_WORDS] = [&[]; MOST_WORDS];
    let mut count = 0;
    for word in Words::new(line) {
        if count == MOST_WORDS {
            return Command::Unknown;
        }
        words[count] = word;
        count += 1;
    }
    match words[..count] {
        [b"CREATE", bucket] => Command::Create { bucket },
        [b"PUT", bucket, key, value] => Command::Put { bucket, key, value },
        [b"GET", bucket, key] => Command::Get { bucket, key },
        [b"DELETE", bucket, key] => Command::Delete { bucket, key },
        [b"SUBSCRIBE", bucket] => Command::Subscribe { bucket },
        _ => Command::Unknown,
    }
}

/// The words of a line: the runs of bytes between whitespace, leading and trailing
/// whitespace ignored.
pub(crate) struct Words<'a> {
    rest: &'a [u8],
}

impl<'a> Words<'a> {
    pub fn new(line: &'a [u8]) -> Self {
        Words { rest: line }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest;
        let mut at = 0;
        // Words are almost always ASCII: only a byte that may begin a multi-byte whitespace
        // character needs a closer look.
        while let Some(&byte) = rest.get(at) {
            match BYTE_CLASS[byte as usize] {
                WORD => break,
                SPACE => at += 1,
                _ => match whitespace_at(&rest[at..]) {
                    0 => break,
                    width => at += width,
                },
            }
        }
        if at == rest.len() {
            self.rest = &[];
            return None;
        }
        let start = at;
        at += 1;
        while let Some(&byte) = rest.get(at) {
            match BYTE_CLASS[byte as usize] {
                WORD => at += 1,
                SPACE => break,
                _ if whitespace_at(&rest[at..]) > 0 => break,
                _ => at += 1,
            }
        }
        self.rest = &rest[at..];
        Some(&rest[start..at])
    }
}

const WORD: u8 = 0;
const SPACE: u8 = 1;
const MAYBE_SPACE: u8 = 2;

/// Each byte's class: part of a word, ASCII whitespace, or the first byte of a UTF-8
/// character that may be whitespace (see [`whitespace_at`]).
static BYTE_CLASS: [u8; 256] = {
    let mut classes = [WORD; 256];
    classes[b'\t' as usize] = SPACE;
    classes[b'\n' as usize] = SPACE;
    classes[0x0b] = SPACE;
    classes[0x0c] = SPACE;
    classes[b'\r' as usize] = SPACE;
    classes[b' ' as usize] = SPACE;
    classes[0xc2] = MAYBE_SPACE;
    classes[0xe1] = MAYBE_SPACE;
    classes[0xe2] = MAYBE_SPACE;
    classes[0xe3] = MAYBE_SPACE;
    classes
};

/// How many bytes of whitespace `bytes` begins with: one character's, or 0.
///
/// Whitespace is what Elixir's `String.split/1` divides on (checked against Elixir 1.14 for
/// every code point up to U+3000): the six ASCII ones (tab, line feed, vertical tab, form
/// feed, carriage return, space) and Unicode's White_Space characters in UTF-8, except the
/// non-breaking ones (U+00A0, U+2007, U+202F). Bytes that are not valid UTF-8 are part of
/// a word, as they are in Elixir.
#[inline]
fn whitespace_at(bytes: &[u8]) -> usize {
    match bytes {
        [b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ', ..] => 1,
        [first, ..] if *first < 0xc2 => 0,
        // U+0085 (next line).
        [0xc2, 0x85, ..] => 2,
        // U+1680 (Ogham space mark).
        [0xe1, 0x9a, 0x80, ..] => 3,
        // U+2000-U+2006 and U+2008-U+200A (the typographic spaces, U+2007 figure space
        // excepted), U+2028 and U+2029 (line and paragraph separators).
        [0xe2, 0x80, 0x80..=0x86 | 0x88..=0x8a | 0xa8 | 0xa9, ..] => 3,
        // U+205F (medium mathematical space).
        [0xe2, 0x81, 0x9f, ..] => 3,
        // U+3000 (ideographic space).
        [0xe3, 0x80, 0x80, ..] => 3,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(line: &[u8]) -> Vec<&[u8]> {
        Words::new(line).collect()
    }

    /// What `String.split/1` does, built on Rust's own Unicode tables.
    fn reference(line: &str) -> Vec<&str> {
        line.split(|c: char| c.is_whitespace() && !matches!(c, '\u{a0}' | '\u{2007}' | '\u{202f}'))
            .filter(|word| !word.is_empty())
            .collect()
    }

    #[test]
    fn the_guides_lines() {
        assert_eq!(
            parse(b"CREATE shopping\r\n"),
            Command::Create {
                bucket: b"shopping"
            }
        );
        assert_eq!(
            parse(b"PUT shopping eggs 3\r\n"),
            Command::Put {
                bucket: b"shopping",
                key: b"eggs",
                value: b"3"
            }
        );
        assert_eq!(
            parse(b"  GET\tshopping   eggs \n"),
            Command::Get {
                bucket: b"shopping",
                key: b"eggs"
            }
        );
        assert_eq!(
            parse(b"DELETE shopping eggs"),
            Command::Delete {
                bucket: b"shopping",
                key: b"eggs"
            }
        );
        assert_eq!(
            parse(b"SUBSCRIBE shopping\n"),
            Command::Subscribe {
                bucket: b"shopping"
            }
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        for line in [
            &b"UNKNOWN shopping\r\n"[..],
            b"\r\n",
            b"",
            b"create shopping\n",
            b"CREATE\n",
            b"CREATE a b\n",
            b"PUT a b\n",
            b"PUT a b c d\n",
            b"GET a\n",
            b"DELETE a b c\n",
            b"SUBSCRIBE\n",
            b"\xa0CREATE a\n",
        ] {
            assert_eq!(
                parse(line),
                Command::Unknown,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn unicode_whitespace_divides_and_non_breaking_does_not() {
        assert_eq!(
            words("a\u{85}b\u{3000}c\u{2028}d".as_bytes()),
            [b"a", b"b", b"c", b"d"]
        );
        assert_eq!(words("a\u{a0}b".as_bytes()), ["a\u{a0}b".as_bytes()]);
        assert_eq!(words("a\u{2007}b\u{202f}c".as_bytes()).len(), 1);
        // Bytes that are not UTF-8 belong to a word.
        assert_eq!(words(b"a\xff b\xe2\x80"), [&b"a\xff"[..], b"b\xe2\x80"]);
    }

    proptest! {
        /// On any text, words are what `String.split/1` gives.
        #[test]
        fn words_are_elixirs(line in "[ a\\t\\r\\n\\u{b}\\u{c}\\u{85}\\u{a0}\\u{1680}\\u{2000}-\\u{200b}\\u{2028}\\u{2029}\\u{202f}\\u{205f}\\u{3000}\\u{1c}\\u{feff}é€]{0,40}") {
            let ours: Vec<&[u8]> = words(line.as_bytes());
            let theirs: Vec<&[u8]> = reference(&line).into_iter().map(str::as_bytes).collect();
            prop_assert_eq!(ours, theirs);
        }

        /// On any bytes, the words are pieces of the line, in order, and never contain
        /// whitespace; nothing panics.
        #[test]
        fn words_are_pieces_of_the_line(line in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut from = 0;
            for word in Words::new(&line) {
                prop_assert!(!word.is_empty());
                let at = word.as_ptr() as usize - line.as_ptr() as usize;
                prop_assert!(at >= from);
                from = at + word.len();
                prop_assert!((0..word.len()).all(|i| whitespace_at(&word[i..]) == 0));
            }
            let _ = parse(&line);
        }
    }
}
