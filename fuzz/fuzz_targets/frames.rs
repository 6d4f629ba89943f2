#![no_main]
//! `make fuzz`: engine::fuzz::frames under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz::frames(data));
