//! Unit tests of `engine/mod.rs`.

use super::*;

#[test]
fn iface_specs_take_an_optional_ingress_attach_point() {
    assert_eq!(
        "gw-c".parse(),
        Ok(IfaceSpec {
            name: "gw-c".to_owned(),
            ingress: None
        })
    );
    assert_eq!(
        "gw-s:xdp-generic".parse(),
        Ok(IfaceSpec {
            name: "gw-s".to_owned(),
            ingress: Some(IngressHook::XdpGeneric)
        })
    );
    assert_eq!(
        "gw-s:fast".parse::<IfaceSpec>(),
        Err(
            "\"fast\" is not an ingress attach point (auto, xdp, xdp-native, xdp-generic, tc, none)"
                .to_owned()
        )
    );
    assert_eq!(
        ":tc".parse::<IfaceSpec>(),
        Err("\":tc\" names no interface".to_owned())
    );
}
