//! The subscription trie against the reference matcher: the input is a
//! list of filters and subjects separated by newlines (filters first, then
//! a line `--`, then subjects).

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sdp_broker::Sublist;
use sdp_broker::subject::subject_matches;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == b'\n');
    let mut sl: Sublist<usize> = Sublist::new();
    let mut filters: Vec<(&[u8], Arc<usize>)> = Vec::new();
    for (i, f) in parts.by_ref().take_while(|l| *l != b"--").enumerate() {
        let e = Arc::new(i);
        if sl.insert(f, None, e.clone()).is_ok() {
            filters.push((f, e));
        }
    }
    for subject in parts {
        let mut got: Vec<usize> = sl.matches(subject).psubs.iter().map(|e| **e).collect();
        got.sort_unstable();
        if subject.split(|b| *b == b'.').any(<[u8]>::is_empty) {
            assert!(got.is_empty());
            continue;
        }
        let mut want: Vec<usize> = filters
            .iter()
            .filter(|(f, _)| subject_matches(f, subject))
            .map(|(_, e)| **e)
            .collect();
        want.sort_unstable();
        assert_eq!(got, want);
    }
    for (f, e) in &filters {
        assert!(sl.remove(f, None, e));
    }
    assert!(sl.is_empty());
});
