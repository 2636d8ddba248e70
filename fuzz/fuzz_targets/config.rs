//! libFuzzer entry for [`connmirror_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::config(data));
