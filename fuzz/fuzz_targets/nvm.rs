#![no_main]
//! `make fuzz`: engine::fuzz::nvm under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz::nvm(data));
