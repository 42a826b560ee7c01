//! Config parsing and validation on arbitrary text: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hookbridge::config::load(text, &|name| (name.len() < 8).then(|| "v".to_owned()));
    }
});
