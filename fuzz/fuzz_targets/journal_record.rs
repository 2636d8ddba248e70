//! libFuzzer entry for [`connmirror_fuzz::journal_record`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::journal_record(data));
