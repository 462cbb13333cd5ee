//! `LineDecoder` fed a byte stream cut into chunks at points taken from the input.
//!
//! Checks: it never buffers more than `max_line + 1` bytes, every line is at most
//! `max_line` bytes and holds no `\n`, and the frames do not depend on where the stream
//! was cut (the same frames as one feed of the whole stream).
#![no_main]

use arbitrary::Arbitrary;
use hangup_core::{Frame, LineDecoder};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Small limits reach the over-long paths with short inputs.
    max_line: u8,
    /// Chunk lengths; the stream's rest is one last chunk.
    cuts: Vec<u8>,
    stream: Vec<u8>,
    /// Whether the stream ends (FIN) after the last chunk.
    finish: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Line(Vec<u8>),
    TooLong,
}

fn record(max_line: usize, frames: &mut Vec<Owned>) -> impl FnMut(Frame<'_>) + '_ {
    move |frame| match frame {
        Frame::Line(line) => {
            assert!(
                line.len() <= max_line,
                "line of {} > {max_line}",
                line.len()
            );
            assert!(!line.contains(&b'\n'), "a line holds a newline");
            frames.push(Owned::Line(line.to_vec()));
        }
        Frame::TooLong => frames.push(Owned::TooLong),
    }
}

fn check_bound(decoder: &LineDecoder, max_line: usize) {
    assert!(
        decoder.buffered() <= max_line + 1,
        "buffers {} bytes, max_line {max_line}",
        decoder.buffered()
    );
}

fuzz_target!(|input: Input| {
    let max_line = usize::from(input.max_line);

    let mut chunked = Vec::new();
    let mut decoder = LineDecoder::new(max_line);
    let mut rest = &input.stream[..];
    for &cut in &input.cuts {
        let (chunk, tail) = rest.split_at(usize::from(cut).min(rest.len()));
        rest = tail;
        decoder.feed(chunk, record(max_line, &mut chunked));
        check_bound(&decoder, max_line);
    }
    decoder.feed(rest, record(max_line, &mut chunked));
    check_bound(&decoder, max_line);
    if input.finish {
        decoder.finish(record(max_line, &mut chunked));
        assert!(!decoder.has_partial(), "finish leaves a partial line");
        assert_eq!(decoder.buffered(), 0);
    }

    let mut whole = Vec::new();
    let mut reference = LineDecoder::new(max_line);
    reference.feed(&input.stream, record(max_line, &mut whole));
    if input.finish {
        reference.finish(record(max_line, &mut whole));
    }
    assert_eq!(chunked, whole, "frames depend on where the stream was cut");
});
