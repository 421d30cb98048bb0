//! `reconcile::spec::yaml::parse` on arbitrary bytes.
//!
//! Checks: never panics, stays within the time/memory limits (alias bombs,
//! deep nesting), and every position in the span index lies inside the input
//! (`offset <= len` and `offset + len <= len`), since the diagnostics renderer
//! slices the source text with them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reconcile::spec::yaml::{self, Pos};

fn check(input_len: usize, which: &str, ptr: &str, p: &Pos) {
    assert!(
        p.offset <= input_len,
        "{which} position of {ptr:?} starts past the input: {p:?}, input is {input_len} bytes"
    );
    let end = p.offset.checked_add(p.len);
    assert!(
        end.is_some_and(|e| e <= input_len),
        "{which} position of {ptr:?} ends past the input: {p:?}, input is {input_len} bytes"
    );
}

fuzz_target!(|data: &[u8]| {
    // Error positions are clamped by `diag::render_text`; the `load` target renders them.
    if let Ok(doc) = yaml::parse(data) {
        for (ptr, p) in &doc.index.value {
            check(data.len(), "value", ptr, p);
        }
        for (ptr, p) in &doc.index.key {
            check(data.len(), "key", ptr, p);
        }
    }
});
