//! libFuzzer entry point; the body and its checks are in `labelwise_fuzz::labels_csv`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| labelwise_fuzz::labels_csv(data));
