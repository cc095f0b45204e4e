//! Fuzzes the streaming reader with arbitrary chunkings of arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = ews::streaming::StreamParser::new();
    for chunk in data.chunks(7) {
        let _ = p.push(chunk);
    }
});
