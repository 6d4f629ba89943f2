#![no_main]
//! `make fuzz`: engine::fuzz::bodies under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz::bodies(data));
