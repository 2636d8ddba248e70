use std::net::TcpListener;

use super::*;

fn range(start: u64, end: u64, acked: u64) -> Recorded {
    Recorded { start, end, acked }
}

fn meta() -> FlowMeta {
    FlowMeta {
        id: 7,
        service: "198.18.0.1:7000".parse().unwrap(),
        server: "198.18.0.1:7000".parse().unwrap(),
        client: "198.18.0.9:40000".parse().unwrap(),
        c2s: range(2, 10, 10),
        s2c: range(0, 4, 3),
    }
}

fn head_of(hello: &[u8]) -> [u8; HELLO_HEAD] {
    hello[..HELLO_HEAD].try_into().unwrap()
}

#[test]
fn hello_round_trips() {
    let hello = Hello {
        services: vec![
            "198.18.0.1:7000".parse().unwrap(),
            "[::1]:80".parse().unwrap(),
        ],
    };
    for version in VERSIONS {
        let bytes = hello.encode(version);
        assert_eq!(&bytes[..4], b"CMHO");
        assert_eq!(&bytes[4..6], &[0, version as u8]);
        let (got, len) = Hello::decode_head(head_of(&bytes)).unwrap();
        assert_eq!((got, len), (version, bytes.len() - HELLO_HEAD));
        assert_eq!(Hello::decode_body(&bytes[HELLO_HEAD..]).unwrap(), hello);
    }
    assert_eq!(VERSION, 2);
}

#[test]
fn hello_head_refuses_wrong_magic_version_and_size() {
    let hello = || Hello { services: vec![] }.encode(VERSION);
    let mut head = head_of(&hello());
    head[..4].copy_from_slice(b"HTTP");
    let err = Hello::decode_head(head).unwrap_err();
    assert_eq!(err.to_string(), "wrong magic \"HTTP\", expected \"CMHO\"");

    for version in [0, 3, 0x100] {
        let mut head = head_of(&hello());
        head[4..6].copy_from_slice(&u16::to_be_bytes(version));
        let err = Hello::decode_head(head).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("unsupported protocol version {version}, this daemon speaks versions 1 and 2")
        );
    }

    let mut head = head_of(&hello());
    head[6..].copy_from_slice(&(MAX_HELLO + 1).to_be_bytes());
    assert!(matches!(
        Hello::decode_head(head),
        Err(WireError::HelloOversize(n)) if n == MAX_HELLO + 1
    ));
    head[6..].copy_from_slice(&MAX_HELLO.to_be_bytes());
    assert_eq!(Hello::decode_head(head).unwrap(), (2, MAX_HELLO as usize));
}

#[test]
fn hello_body_refuses_unknown_fields_and_no_service() {
    let unknown = br#"{"services": ["198.18.0.1:7000"], "extra": 1}"#;
    assert!(matches!(
        Hello::decode_body(unknown),
        Err(WireError::HelloJson(_))
    ));
    assert!(matches!(
        Hello::decode_body(b"not json"),
        Err(WireError::HelloJson(_))
    ));
    let empty = br#"{"services": []}"#;
    assert!(matches!(
        Hello::decode_body(empty),
        Err(WireError::NoService)
    ));
}

#[test]
fn header_round_trips() {
    let meta = meta();
    let header = meta.encode_header();
    let prefix: [u8; HEADER_PREFIX] = header[..HEADER_PREFIX].try_into().unwrap();
    let len = FlowMeta::decode_header_len(prefix).unwrap();
    assert_eq!(len, header.len() - HEADER_PREFIX);
    assert_eq!(
        FlowMeta::decode_header(&header[HEADER_PREFIX..]).unwrap(),
        meta
    );
}

#[test]
fn header_refuses_oversize_unknown_fields_and_bad_ranges() {
    let err = FlowMeta::decode_header_len((MAX_HEADER + 1).to_be_bytes()).unwrap_err();
    assert!(matches!(err, WireError::HeaderOversize(_)), "{err}");

    let mut json: serde_json::Value = serde_json::to_value(meta()).unwrap();
    json["extra"] = 1.into();
    let bytes = serde_json::to_vec(&json).unwrap();
    assert!(matches!(
        FlowMeta::decode_header(&bytes),
        Err(WireError::HeaderJson(_))
    ));

    let mut bad = meta();
    bad.s2c = range(5, 4, 0);
    let json = serde_json::to_vec(&bad).unwrap();
    let err = FlowMeta::decode_header(&json).unwrap_err();
    assert_eq!(err.to_string(), "s2c range [5, 4) ends before it starts");
}

#[test]
fn bundle_head_is_the_count_then_each_header() {
    let (mut first, mut second) = (meta(), meta());
    first.id = 1;
    second.id = 2;
    second.c2s = range(0, 0, 0);
    let head = encode_bundle_head([&first, &second].into_iter());
    let (one, two) = (first.encode_header(), second.encode_header());
    assert_eq!(&head[..COUNT_PREFIX], &[0, 0, 0, 2]);
    assert_eq!(&head[COUNT_PREFIX..COUNT_PREFIX + one.len()], &one[..]);
    assert_eq!(&head[COUNT_PREFIX + one.len()..], &two[..]);
    assert_eq!(head.len(), COUNT_PREFIX + one.len() + two.len());
}

#[test]
fn bundle_count_is_1_to_253() {
    assert_eq!(decode_bundle_count(1u32.to_be_bytes()).unwrap(), 1);
    assert_eq!(decode_bundle_count(253u32.to_be_bytes()).unwrap(), 253);
    for bad in [0u32, 254, u32::MAX] {
        let err = decode_bundle_count(bad.to_be_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("bundle announces {bad} connections, expected 1 to 253")
        );
    }
}

#[test]
fn ranges_are_checked() {
    assert!(range(0, 0, 0).check("c2s").is_ok());
    assert!(range(3, 9, 9).check("c2s").is_ok());
    let err = range(3, 9, 10).check("c2s").unwrap_err();
    assert_eq!(
        err.to_string(),
        "c2s acknowledged offset 10 is past its end 9"
    );
    assert_eq!(range(3, 9, 0).len(), 6);
    assert!(range(9, 9, 0).is_empty());
    assert_eq!(range(9, 3, 0).len(), 0, "a backwards range holds nothing");
}

#[test]
fn handoff_check_compares_bytes_with_ranges() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut handoff = Handoff {
        stream,
        meta: meta(),
        c2s: vec![0; 8],
        s2c: vec![0; 4],
    };
    handoff.check().unwrap();
    handoff.s2c.push(1);
    let err = handoff.check().unwrap_err();
    assert_eq!(
        err.to_string(),
        "s2c holds 5 bytes but its range [0, 4) spans 4"
    );
    let debug = format!("{handoff:?}");
    assert!(debug.contains("s2c_len: 5"), "{debug}");
}
