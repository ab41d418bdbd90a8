//! libFuzzer entry point; the body and its checks are in `labelwise_fuzz::idx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| labelwise_fuzz::idx(data));
