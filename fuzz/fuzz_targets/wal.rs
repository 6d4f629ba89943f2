#![no_main]
//! `make fuzz`: engine::fuzz::wal under libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz::wal(data));
