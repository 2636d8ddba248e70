//! Unit tests of `daemon/config.rs`.

use clap::Args as _;

use super::*;
use crate::{daemon::agent::AgentArgs, daemon::standby::StandbyArgs};

const LAYOUT: Layout<'static> = Layout {
    tables: &["standby", "agent", "status"],
    inherit: &[("control", &["standby", "agent"], &["status"])],
};

/// The real standby and agent flags, and a client command with `--control`.
fn cli() -> Command {
    let status = Command::new("status").arg(
        Arg::new("control")
            .long("control")
            .default_value("/run/connmirror/control.sock"),
    );
    let cmd = Command::new("connmirror")
        .subcommand(StandbyArgs::augment_args(Command::new("standby")))
        .subcommand(AgentArgs::augment_args(Command::new("agent")))
        .subcommand(status);
    with_config_flag(cmd, &LAYOUT)
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("/etc/cm.toml"), text, &cli(), &LAYOUT).map_err(|e| e.to_string())
}

fn error(text: &str) -> String {
    parse(text).expect_err("the file is bad")
}

const STANDBY: &str = r#"
# the standby
[standby]
iface = ["gw-c:tc", "gw-s:tc"]
service = ["198.18.1.2:7000=full"]
egress = "none"
ring_size = "1M"
salvage = true
control = "/run/cm/control.sock"
"#;

fn args(config: &Config, table: &str) -> Vec<String> {
    config
        .args_for(table, |_| false)
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect()
}

#[test]
fn each_key_becomes_its_flag_in_file_order() {
    let config = parse(STANDBY).unwrap();
    assert_eq!(
        args(&config, "standby"),
        [
            "--iface=gw-c:tc",
            "--iface=gw-s:tc",
            "--service=198.18.1.2:7000=full",
            "--egress=none",
            "--ring-size=1M",
            "--salvage",
            "--control=/run/cm/control.sock",
        ]
    );
}

#[test]
fn a_client_table_takes_the_standbys_control_socket() {
    let config = parse(STANDBY).unwrap();
    assert_eq!(args(&config, "status"), ["--control=/run/cm/control.sock"]);
    let own = format!("{STANDBY}[status]\ncontrol = \"/tmp/mine.sock\"\n");
    assert_eq!(
        args(&parse(&own).unwrap(), "status"),
        ["--control=/tmp/mine.sock"]
    );
    assert_eq!(
        args(&parse(STANDBY).unwrap(), "agent"),
        Vec::<String>::new()
    );
    let primary = "[agent]\ncontrol = \"/run/cm/agent.sock\"\n";
    assert_eq!(
        args(&parse(primary).unwrap(), "status"),
        ["--control=/run/cm/agent.sock"]
    );
}

#[test]
fn false_switches_and_integers() {
    let config = parse("[standby]\nsalvage = false\nfsync_interval = 0x10\nmissed = 5\n").unwrap();
    assert_eq!(
        args(&config, "standby"),
        ["--fsync-interval=16", "--missed=5"]
    );
}

#[test]
fn command_line_flags_replace_the_files_values() {
    let path = std::env::temp_dir().join(format!("cm-config-{}.toml", std::process::id()));
    std::fs::write(&path, STANDBY).unwrap();
    let argv: Vec<OsString> = ["connmirror", "standby", "--config"]
        .iter()
        .map(OsString::from)
        .chain([path.clone().into_os_string()])
        .chain(["--iface", "eth0", "--ring-size=4M", "--", "x"].map(OsString::from))
        .collect();
    let merged = apply(&cli(), &LAYOUT, argv);
    std::fs::remove_file(&path).unwrap();
    let merged: Vec<String> = merged
        .unwrap()
        .into_iter()
        .skip(4)
        .map(|a| a.into_string().unwrap())
        .collect();
    assert_eq!(
        merged,
        [
            "--iface",
            "eth0",
            "--ring-size=4M",
            "--service=198.18.1.2:7000=full",
            "--egress=none",
            "--salvage",
            "--control=/run/cm/control.sock",
            "--",
            "x",
        ]
    );
}

#[test]
fn a_command_line_without_config_is_untouched() {
    let argv: Vec<OsString> = ["connmirror", "standby", "--iface", "x"]
        .map(OsString::from)
        .into();
    assert_eq!(apply(&cli(), &LAYOUT, argv.clone()).unwrap(), argv);
}

#[test]
fn errors_name_the_file_the_line_and_the_key() {
    let cases = [
        (
            "[standby]\n\nring_size = \"16Q\"\n",
            r#"/etc/cm.toml:3: key "standby.ring_size": invalid value "16Q": "16Q" is not a size"#,
        ),
        (
            "[standby]\nring_size = \"12K\"\n",
            "/etc/cm.toml:2: key \"standby.ring_size\": invalid value \"12K\": ring size 12288 is \
             invalid: it must be a power of two of at least 65536 bytes (a smaller ring cannot \
             hold a burst, so backpressure would stall every flow)",
        ),
        (
            "[standby]\negress = \"tcp\"\n",
            r#"/etc/cm.toml:2: key "standby.egress": invalid value "tcp": expected one of auto, tc, none"#,
        ),
        (
            "[standby]\niface = [\n  \"a\",\n  7.5,\n]\n",
            r#"/etc/cm.toml:4: key "standby.iface": expected strings or integers in the array, found a float"#,
        ),
        (
            "[standby]\niface = \"a\"\n",
            r#"/etc/cm.toml:2: key "standby.iface": expected an array (the flag can be repeated), found a string"#,
        ),
        (
            "[standby]\nsalvage = \"yes\"\n",
            r#"/etc/cm.toml:2: key "standby.salvage": expected a boolean, found a string"#,
        ),
        (
            "[standby]\nring_size = [1]\n",
            r#"/etc/cm.toml:2: key "standby.ring_size": expected a string or an integer, found an array"#,
        ),
        (
            "[standby]\nmissed = -1\n",
            r#"/etc/cm.toml:2: key "standby.missed": invalid value "-1": -1 is not in 0..=4294967295"#,
        ),
        (
            "[agent]\nnode_id = \"p\"\nmissed = 4\n",
            r#"/etc/cm.toml:3: key "agent.missed": unknown key: `connmirror agent` has no flag --missed"#,
        ),
        (
            "[standby]\nconfig = \"/etc/other.toml\"\n",
            r#"/etc/cm.toml:2: key "standby.config": unknown key: `connmirror standby` has no flag --config"#,
        ),
        (
            "\n[standy]\n",
            r#"/etc/cm.toml:2: key "standy": unknown table: expected one of [standby], [agent], [status]"#,
        ),
        (
            "ring_size = 1\n",
            r#"/etc/cm.toml:1: key "ring_size": unknown table: expected one of [standby], [agent], [status]"#,
        ),
        (
            "standby = 1\n",
            r#"/etc/cm.toml:1: key "standby": expected a table, found an integer"#,
        ),
        (
            "[standby]\nmissed = 3\nmissed = 4\n",
            r#"/etc/cm.toml:3: duplicate key "missed""#,
        ),
        (
            "[standby]\niface = [\"a\"\n",
            "/etc/cm.toml:2: unclosed array, expected `]`",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error(text), expected, "{text}");
    }
}

#[test]
fn a_table_missing_a_required_key_names_it() {
    let config = parse("[standby]\nservice = [\"198.18.1.2:7000\"]\n").unwrap();
    assert_eq!(
        config.effective(&cli()).unwrap_err().to_string(),
        r#"/etc/cm.toml:1: [standby]: missing required key "iface""#
    );
}

#[test]
fn effective_settings_are_toml_with_defaults_marked() {
    let text = "[agent]\nstandby = [\"198.18.1.1:7400\"]\nkey = \"/etc/k\"\nnode_id = \"p\"\nservice = [\"198.18.1.2:7000\"]\ninterval = 20\n";
    let effective = parse(text).unwrap().effective(&cli()).unwrap();
    assert_eq!(
        effective,
        "[agent]\n\
         standby = [\"198.18.1.1:7400\"]\n\
         key = \"/etc/k\"\n\
         node_id = \"p\"\n\
         cluster_id = \"connmirror\"  # default\n\
         service = [\"198.18.1.2:7000\"]\n\
         mac = []\n\
         application = []\n\
         epoch = 1  # default\n\
         policy = \"auto\"  # default\n\
         interval = 20\n\
         # bind: not set\n\
         port = 7401  # default\n\
         recovering = false  # default\n\
         # handoff: not set\n\
         # control: not set\n\
         handoff_wait = 10000  # default\n\
         etcd = []\n\
         # etcd_ca: not set\n\
         # etcd_cert: not set\n\
         # etcd_key: not set\n\
         # etcd_user: not set\n\
         # etcd_password_file: not set\n\
         etcd_prefix = \"/connmirror\"  # default\n\
         etcd_timeout = 1000  # default\n\
         lease_ttl = 3  # default\n\
         metrics = \"127.0.0.1:9464\"  # default\n\
         iface = []\n\
         replicate_to = []\n\
         sync = false  # default\n\
         sync_timeout = 1000  # default\n\
         sync_queue = 7403  # default\n\
         ingress = \"auto\"  # default\n\
         egress = \"tc\"  # default\n\
         ring_size = \"64M\"  # default\n\
         retention = \"unacked\"  # default\n\
         # pin: not set\n\n"
    );
    // What it prints reads back as the same settings.
    let again = parse(&effective).unwrap().effective(&cli()).unwrap();
    assert_eq!(
        again.replace("  # default", ""),
        effective.replace("  # default", "")
    );
}

/// Every flag of the real command line maps to a key and back.
#[test]
fn every_flag_has_a_long_name() {
    let mut cmd = cli();
    cmd.build();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments().filter(|a| configurable(a)) {
            assert!(
                arg.get_long().is_some(),
                "{} {:?}",
                sub.get_name(),
                arg.get_id()
            );
        }
    }
    cmd.debug_assert();
}
