#![no_main]
//! See `collective_fuzzing::invite_codes`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| collective_fuzzing::invite_codes(data));
