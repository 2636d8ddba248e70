//! libFuzzer entry for [`connmirror_fuzz::packet`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::packet(data));
