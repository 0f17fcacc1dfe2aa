//! libFuzzer entry point of the `index_file` target (see quiver_fuzz::index_file).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_fuzz::index_file::run(data));
