//! libFuzzer entry point of the `qdrant` target (see quiver_fuzz::qdrant).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_fuzz::qdrant::run(data));
