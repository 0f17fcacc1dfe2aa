//! libFuzzer entry point of the `vector_file` target (see quiver_fuzz::vector_file).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_fuzz::vector_file::run(data));
