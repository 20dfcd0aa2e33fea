//! Property tests of the line framing: any byte stream, split into reads anywhere, with any
//! line limit, comes out byte-exact, with no piece longer than the limit, no unfinished line
//! held at the limit or beyond, and no buffer for it larger than the limit.

use kv_server::line;
use proptest::prelude::*;

/// Frames `stream` as the reactor would, cutting it into reads at `cuts`.
fn frame_in_reads(stream: &[u8], cuts: &[usize], max: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut pieces = Vec::new();
    let mut partial = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    bounds.push(0);
    bounds.push(stream.len());
    bounds.sort_unstable();
    for window in bounds.windows(2) {
        let read = &stream[window[0]..window[1]];
        line::frame::<()>(&mut partial, read, max, &mut |piece| {
            pieces.push(piece.to_vec());
            Ok(())
        })
        .unwrap();
        assert!(
            partial.len() < max,
            "held {} bytes, limit {max}",
            partial.len()
        );
        if partial.is_empty() {
            assert_eq!(partial.capacity(), 0, "an empty tail owns no buffer");
        }
        assert!(
            partial.capacity() <= max,
            "a buffer of {} bytes, limit {max}",
            partial.capacity()
        );
    }
    let held = partial.clone();
    line::finish::<()>(&mut partial, &mut |piece| {
        pieces.push(piece.to_vec());
        Ok(())
    })
    .unwrap();
    (pieces, held)
}

/// Bytes with plenty of newlines, CRs and arbitrary values.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![3 => Just(b'\n'), 1 => Just(b'\r'), 8 => any::<u8>()],
        0..600,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn output_is_the_input_cut_only_where_allowed(
        stream in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max in 1usize..80,
    ) {
        let (pieces, _) = frame_in_reads(&stream, &cuts, max);
        prop_assert_eq!(pieces.concat(), stream.clone());
        let last = pieces.len().saturating_sub(1);
        for (index, piece) in pieces.iter().enumerate() {
            prop_assert!(!piece.is_empty());
            // Each piece is a run of whole lines, or one cut piece of exactly `max` bytes,
            // or the unfinished tail handed on at the end of the stream.
            let is_tail = index == last && !stream.ends_with(b"\n");
            if !piece.ends_with(b"\n") && !is_tail {
                prop_assert_eq!(piece.len(), max);
            }
            for line in piece.split_inclusive(|&b| b == b'\n') {
                prop_assert!(line.len() <= max, "a line of {} bytes, limit {}", line.len(), max);
            }
        }
    }

    #[test]
    fn where_long_lines_are_cut_does_not_depend_on_the_reads(
        stream in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max in 1usize..80,
    ) {
        let (split, _) = frame_in_reads(&stream, &cuts, max);
        let (whole, _) = frame_in_reads(&stream, &[], max);
        let lines = |pieces: &[Vec<u8>]| -> Vec<Vec<u8>> {
            pieces
                .iter()
                .flat_map(|p| p.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec))
                .collect()
        };
        prop_assert_eq!(lines(&split), lines(&whole));
    }
}

#[test]
fn a_run_of_complete_lines_is_one_piece() {
    let (pieces, held) = frame_in_reads(b"a\nbb\nccc\ntail", &[], 64);
    assert_eq!(pieces, vec![b"a\nbb\nccc\n".to_vec(), b"tail".to_vec()]);
    assert_eq!(held, b"tail");
}

#[test]
fn a_long_line_is_cut_from_its_start() {
    let (pieces, _) = frame_in_reads(b"ok\n0123456789\nok\n", &[5, 9], 4);
    assert_eq!(
        pieces,
        vec![
            b"ok\n".to_vec(),
            b"0123".to_vec(),
            b"4567".to_vec(),
            b"89\n".to_vec(),
            b"ok\n".to_vec()
        ]
    );
}
