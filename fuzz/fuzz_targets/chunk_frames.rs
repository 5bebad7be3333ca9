#![no_main]
//! See `collective_fuzzing::chunk_frames`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| collective_fuzzing::chunk_frames(data));
