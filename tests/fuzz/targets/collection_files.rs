//! libFuzzer entry point of the `collection_files` target (see quiver_fuzz::collection_files).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_fuzz::collection_files::run(data));
