//! libFuzzer entry for [`connmirror_fuzz::replication`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::replication(data));
