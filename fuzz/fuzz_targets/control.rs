//! libFuzzer entry for [`connmirror_fuzz::control`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::control(data));
