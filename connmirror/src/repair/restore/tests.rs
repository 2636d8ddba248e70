//! Unit tests of the restore: the `TCP_REPAIR_OPTIONS` list, the batching
//! of parallel restores and the error text. The calls themselves need
//! `CAP_NET_ADMIN` and a peer; the integration tests (tests/restore.rs) cover
//! them.

use std::io;

use super::parallel::batches;
use super::*;
use crate::sys::errno;

#[test]
fn repair_options_always_carry_mss_and_window_scale() {
    let options = RestoreOptions {
        mss: 1460,
        window_scale: Some(WindowScale {
            send: 7,
            receive: 9,
        }),
        sack: true,
        timestamps: true,
    };
    let (list, len) = repair_options(&options);
    let pairs: Vec<_> = list[..len]
        .iter()
        .map(|o| (o.opt_code, o.opt_val))
        .collect();
    assert_eq!(pairs, [(2, 1460), (3, 7 | 9 << 16), (4, 0), (8, 0)]);

    let bare = RestoreOptions {
        mss: 536,
        window_scale: None,
        sack: false,
        timestamps: false,
    };
    let (list, len) = repair_options(&bare);
    let pairs: Vec<_> = list[..len]
        .iter()
        .map(|o| (o.opt_code, o.opt_val))
        .collect();
    assert_eq!(pairs, [(2, 536), (3, 0)]);
}

#[test]
fn batches_keep_order_and_cover_every_item() {
    assert_eq!(
        batches((0..10).collect(), 3),
        [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
    );
    assert_eq!(batches((0..2).collect(), 8), [vec![0], vec![1]]);
    assert_eq!(batches::<u8>(Vec::new(), 0), Vec::<Vec<u8>>::new());
}

#[test]
fn error_text_names_the_call_and_the_flow() {
    let err = restore_error(
        "setsockopt(TCP_REPAIR_WINDOW)",
        "198.18.1.2:7000".parse().unwrap(),
        "198.18.0.1:40312".parse().unwrap(),
        io::Error::from_raw_os_error(errno::EINVAL),
    );
    assert_eq!(
        err.to_string(),
        "setsockopt(TCP_REPAIR_WINDOW) on 198.18.1.2:7000 ↔ 198.18.0.1:40312: Invalid argument (os error 22)"
    );
}
