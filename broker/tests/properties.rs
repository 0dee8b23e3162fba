//! Property tests (bounded, run in CI): the parser on arbitrary bytes and
//! arbitrary splits, and the subscription trie against a naive matcher.
//! The unbounded variant is the cargo-fuzz target in `broker/fuzz`.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use sdp_broker::subject::{is_valid_subject, subject_matches};
use sdp_broker::{ClientOp, Parser, ParserLimits, ProtocolError, Sublist};

const LIMITS: ParserLimits = ParserLimits {
    max_control_line: 64,
    max_payload: 128,
};

/// Feeds `input` in chunks cut at `cuts` and collects the operations up to
/// the first error.
fn parse_split(input: &[u8], cuts: &[usize]) -> (Vec<ClientOp>, Option<ProtocolError>) {
    let mut p = Parser::new(LIMITS);
    let mut ops = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut start = 0;
    for end in points {
        p.feed(&input[start..end]);
        start = end;
        loop {
            match p.next_op() {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(e) => {
                    let e = match e {
                        // How much of an over-long line was seen depends on
                        // the split.
                        ProtocolError::MaxControlLine { max, .. } => {
                            ProtocolError::MaxControlLine { len: 0, max }
                        }
                        e => e,
                    };
                    return (ops, Some(e));
                }
            }
        }
    }
    (ops, None)
}

/// Bytes that look like protocol most of the time.
fn protocolish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"PUB ".to_vec()),
        Just(b"HPUB ".to_vec()),
        Just(b"SUB ".to_vec()),
        Just(b"UNSUB ".to_vec()),
        Just(b"PING".to_vec()),
        Just(b"PONG".to_vec()),
        Just(b"CONNECT {}".to_vec()),
        Just(b"INFO {}".to_vec()),
        Just(b"+OK".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\t".to_vec()),
        "[a-z.*>]{1,6}".prop_map(String::into_bytes),
        (0u32..200).prop_map(|n| n.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 1..4),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn subject_token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("*".to_string()),
        Just(">".to_string()),
    ]
}

fn filter() -> impl Strategy<Value = String> {
    proptest::collection::vec(subject_token(), 1..5).prop_map(|t| t.join("."))
}

fn literal() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")],
        1..6,
    )
    .prop_map(|t| t.join("."))
}

/// Serialises an operation as a client would send it.
fn wire(op: &ClientOp) -> Vec<u8> {
    match op {
        ClientOp::Pub {
            subject,
            reply,
            payload,
        } => {
            let mut v = b"PUB ".to_vec();
            v.extend_from_slice(subject);
            if let Some(r) = reply {
                v.push(b' ');
                v.extend_from_slice(r);
            }
            v.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
            v.extend_from_slice(payload);
            v.extend_from_slice(b"\r\n");
            v
        }
        ClientOp::Hpub {
            subject,
            reply,
            headers,
            payload,
        } => {
            let mut v = b"HPUB ".to_vec();
            v.extend_from_slice(subject);
            if let Some(r) = reply {
                v.push(b' ');
                v.extend_from_slice(r);
            }
            v.extend_from_slice(
                format!(" {} {}\r\n", headers.len(), headers.len() + payload.len()).as_bytes(),
            );
            v.extend_from_slice(headers);
            v.extend_from_slice(payload);
            v.extend_from_slice(b"\r\n");
            v
        }
        ClientOp::Sub {
            subject,
            queue,
            sid,
        } => {
            let mut v = b"SUB ".to_vec();
            v.extend_from_slice(subject);
            if let Some(q) = queue {
                v.push(b' ');
                v.extend_from_slice(q);
            }
            v.push(b' ');
            v.extend_from_slice(sid);
            v.extend_from_slice(b"\r\n");
            v
        }
        ClientOp::Unsub { sid, max } => {
            let mut v = b"UNSUB ".to_vec();
            v.extend_from_slice(sid);
            if let Some(m) = max {
                v.extend_from_slice(format!(" {m}").as_bytes());
            }
            v.extend_from_slice(b"\r\n");
            v
        }
        ClientOp::Ping => b"PING\r\n".to_vec(),
        ClientOp::Pong => b"PONG\r\n".to_vec(),
        ClientOp::Connect(_) => b"CONNECT {}\r\n".to_vec(),
    }
}

fn op() -> impl Strategy<Value = ClientOp> {
    let word = || "[a-z0-9._]{1,10}".prop_map(Bytes::from);
    let body = || proptest::collection::vec(any::<u8>(), 0..60).prop_map(Bytes::from);
    prop_oneof![
        (word(), proptest::option::of(word()), body()).prop_map(|(subject, reply, payload)| {
            ClientOp::Pub {
                subject,
                reply,
                payload,
            }
        }),
        (word(), proptest::option::of(word()), body(), body()).prop_map(
            |(subject, reply, headers, payload)| ClientOp::Hpub {
                subject,
                reply,
                headers,
                payload,
            }
        ),
        (word(), proptest::option::of(word()), word()).prop_map(|(subject, queue, sid)| {
            ClientOp::Sub {
                subject,
                queue,
                sid,
            }
        }),
        (word(), proptest::option::of(0u64..1000))
            .prop_map(|(sid, max)| ClientOp::Unsub { sid, max }),
        Just(ClientOp::Ping),
        Just(ClientOp::Pong),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any bytes, any split: never a panic, and the same result as the
    /// input parsed whole.
    #[test]
    fn parser_split_invariant(
        input in prop_oneof![protocolish(), proptest::collection::vec(any::<u8>(), 0..200)],
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = parse_split(&input, &[]);
        let split = parse_split(&input, &cuts);
        prop_assert_eq!(&whole, &split);
        let bytewise: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(whole, parse_split(&input, &bytewise));
    }

    /// Valid operations round-trip through the wire format, whatever the
    /// split.
    #[test]
    fn parser_round_trip(
        ops in proptest::collection::vec(op(), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let input: Vec<u8> = ops.iter().flat_map(wire).collect();
        let (parsed, err) = parse_split(&input, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(parsed, ops);
    }

    /// The trie returns exactly what a linear scan with the reference
    /// matcher returns, through inserts and removals.
    #[test]
    fn sublist_matches_reference(
        filters in proptest::collection::vec((filter(), proptest::option::of(prop_oneof![Just("q1"), Just("q2")])), 0..30),
        removals in proptest::collection::vec(any::<usize>(), 0..10),
        subjects in proptest::collection::vec(literal(), 1..10),
    ) {
        let mut sl: Sublist<usize> = Sublist::new();
        let mut live: Vec<(String, Option<&str>, Arc<usize>)> = Vec::new();
        for (i, (f, q)) in filters.iter().enumerate() {
            let entry = Arc::new(i);
            let ok = sl.insert(f.as_bytes(), q.map(str::as_bytes), entry.clone()).is_ok();
            prop_assert_eq!(ok, is_valid_subject(f.as_bytes()));
            if ok {
                live.push((f.clone(), *q, entry));
            }
        }
        for r in removals {
            if live.is_empty() {
                break;
            }
            let (f, q, e) = live.remove(r % live.len());
            prop_assert!(sl.remove(f.as_bytes(), q.map(str::as_bytes), &e));
        }
        prop_assert_eq!(sl.len(), live.len());
        for s in &subjects {
            let r = sl.matches(s.as_bytes());
            let mut got: Vec<usize> = r.psubs.iter().map(|e| **e).collect();
            for g in &r.qsubs {
                got.extend(g.members.iter().map(|e| **e));
            }
            got.sort_unstable();
            let mut want: Vec<usize> = live
                .iter()
                .filter(|(f, _, _)| subject_matches(f.as_bytes(), s.as_bytes()))
                .map(|(_, _, e)| **e)
                .collect();
            want.sort_unstable();
            prop_assert_eq!(got, want, "subject {}", s);
        }
    }
}
