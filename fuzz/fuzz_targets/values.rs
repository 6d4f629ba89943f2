#![no_main]
//! `make fuzz`: engine::fuzz::values under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz::values(data));
