//! libFuzzer entry for [`connmirror_fuzz::migration`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::migration(data));
