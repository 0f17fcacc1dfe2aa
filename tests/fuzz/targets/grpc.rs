//! libFuzzer entry point of the `grpc` target (see quiver_fuzz::grpc).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_fuzz::grpc::run(data));
