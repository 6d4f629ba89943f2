#![no_main]
//! `make fuzz`: engine::fuzz::checkpoint under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz::checkpoint(data));
