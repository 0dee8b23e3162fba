//! The parser on arbitrary bytes: never panics, and the result does not
//! depend on how the input is split (the first byte picks the chunk size).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sdp_broker::{ClientOp, Parser, ParserLimits, ProtocolError};

const LIMITS: ParserLimits = ParserLimits {
    max_control_line: 256,
    max_payload: 1024,
};

fn run(input: &[u8], chunk: usize) -> (Vec<ClientOp>, Option<ProtocolError>) {
    let mut p = Parser::new(LIMITS);
    p.set_headers_allowed(input.len() % 2 == 0);
    let mut ops = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        p.feed(piece);
        loop {
            match p.next_op() {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(ProtocolError::MaxControlLine { max, .. }) => {
                    return (ops, Some(ProtocolError::MaxControlLine { len: 0, max }));
                }
                Err(e) => return (ops, Some(e)),
            }
        }
    }
    (ops, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let whole = run(input, input.len().max(1));
    let split = run(input, usize::from(first % 17) + 1);
    assert_eq!(whole, split);
});
