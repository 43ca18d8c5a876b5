#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gradpool_fuzz::checkpoint_load(data));
