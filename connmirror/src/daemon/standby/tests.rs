//! Unit tests of `daemon/standby.rs`.

use super::*;

#[test]
fn resume_specs_name_a_service_and_a_mode() {
    let service = |text: &str| text.parse::<SocketAddr>().unwrap();
    let cases = [
        ("198.18.1.2:7000=handoff", Resume::Handoff),
        (
            "[fd00::2]:7000=replay:[::1]:7001",
            Resume::Replay(service("[::1]:7001")),
        ),
        (
            "198.18.1.2:7000=live:127.0.0.1:7001",
            Resume::Live(service("127.0.0.1:7001")),
        ),
    ];
    for (text, resume) in cases {
        let at = service(text.split_once('=').unwrap().0);
        assert_eq!(text.parse(), Ok(ResumeSpec(at, resume)), "{text}");
    }
    let errors = [
        (
            "7000",
            "\"7000\" is not IP:PORT=handoff, IP:PORT=live:ADDR or IP:PORT=replay:ADDR",
        ),
        (
            "198.18.1.2:7000=copy",
            "\"copy\" is not `handoff`, `live:IP:PORT` or `replay:IP:PORT`",
        ),
        (
            "198.18.1.2:7000=replay:nowhere",
            "\"nowhere\" is not an IP:PORT application address",
        ),
        ("7000=handoff", "\"7000\" is not an IP:PORT service address"),
    ];
    for (text, error) in errors {
        assert_eq!(text.parse::<ResumeSpec>(), Err(error.to_owned()), "{text}");
    }
}
