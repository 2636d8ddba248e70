//! Unit tests of `daemon/standby.rs`.

use super::*;

#[test]
fn resume_specs_name_a_service_and_a_mode() {
    assert_eq!(
        "198.18.1.2:7000=handoff".parse(),
        Ok(ResumeSpec(
            "198.18.1.2:7000".parse().unwrap(),
            Resume::Handoff
        ))
    );
    assert_eq!(
        "[fd00::2]:7000=replay:[::1]:7001".parse(),
        Ok(ResumeSpec(
            "[fd00::2]:7000".parse().unwrap(),
            Resume::Replay("[::1]:7001".parse().unwrap())
        ))
    );
    assert_eq!(
        "198.18.1.2:7000=live:127.0.0.1:7001".parse(),
        Ok(ResumeSpec(
            "198.18.1.2:7000".parse().unwrap(),
            Resume::Live("127.0.0.1:7001".parse().unwrap())
        ))
    );
    assert_eq!(
        "7000".parse::<ResumeSpec>(),
        Err("\"7000\" is not IP:PORT=handoff, IP:PORT=live:ADDR or IP:PORT=replay:ADDR".to_owned())
    );
    assert_eq!(
        "198.18.1.2:7000=copy".parse::<ResumeSpec>(),
        Err("\"copy\" is not `handoff`, `live:IP:PORT` or `replay:IP:PORT`".to_owned())
    );
    assert_eq!(
        "198.18.1.2:7000=replay:nowhere".parse::<ResumeSpec>(),
        Err("\"nowhere\" is not an IP:PORT application address".to_owned())
    );
    assert_eq!(
        "7000=handoff".parse::<ResumeSpec>(),
        Err("\"7000\" is not an IP:PORT service address".to_owned())
    );
}
