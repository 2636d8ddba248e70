//! libFuzzer entry for [`connmirror_fuzz::heartbeat`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::heartbeat(data));
