#![no_main]
//! See `collective_fuzzing::records`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| collective_fuzzing::records(data));
