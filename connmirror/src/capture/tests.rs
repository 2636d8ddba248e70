//! Unit tests of the capture options (`capture/options.rs`): sizes and ring sizes.

use super::*;

#[test]
fn sizes_accept_binary_suffixes() {
    assert_eq!(parse_size("64K"), Ok(65536));
    assert_eq!(parse_size("16m"), Ok(16 << 20));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(
        parse_size("4G"),
        Err("4G is larger than 4 GiB - 1".to_owned())
    );
    assert_eq!(parse_size("x"), Err("\"x\" is not a size".to_owned()));
}

#[test]
fn ring_sizes_are_powers_of_two_of_at_least_64k() {
    assert_eq!(parse_ring_size("64K"), Ok(65536));
    assert_eq!(
        parse_ring_size("12K"),
        Err(
            "ring size 12288 is invalid: it must be a power of two of at least 65536 bytes \
             (a smaller ring cannot hold a burst, so backpressure would stall every flow)"
                .to_owned()
        )
    );
    assert_eq!(parse_ring_size("32K").map_err(|_| ()), Err(()));
}
