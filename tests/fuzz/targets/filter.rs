//! libFuzzer entry point of the `filter` target (see quiver_fuzz::filter).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_fuzz::filter::run(data));
