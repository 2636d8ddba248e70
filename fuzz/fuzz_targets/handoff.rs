//! libFuzzer entry for [`connmirror_fuzz::handoff`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::handoff(data));
