//! libFuzzer entry for [`connmirror_fuzz::ring_record`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::ring_record(data));
