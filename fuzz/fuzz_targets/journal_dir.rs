//! libFuzzer entry for [`connmirror_fuzz::journal_dir`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connmirror_fuzz::journal_dir(data));
