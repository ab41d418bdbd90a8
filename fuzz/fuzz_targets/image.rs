//! libFuzzer entry point; the body and its checks are in `labelwise_fuzz::image`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| labelwise_fuzz::image(data));
