//! `--config FILE`: a bad file stops the daemon with the file, line and key;
//! the file's settings reach the daemon, flags on the command line replace
//! them; every example in `examples/` passes `connmirror config check`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use connmirror_tests::mirror::{Mirror, MirrorCommand, MirrorExit};
use connmirror_tests::process::output_with_timeout;
use connmirror_tests::{Netns, WorkDir, connmirror_bin, require_root};

const TIMEOUT: Duration = Duration::from_secs(60);
const SERVICE: &str = "198.18.1.2:7000";

/// Runs `connmirror ARGS...` (outside any namespace) to completion.
fn connmirror(args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(connmirror_bin());
    cmd.args(args);
    output_with_timeout(&mut cmd, TIMEOUT)
}

fn write(dir: &WorkDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_bad_config_file_exits_1_naming_the_key_and_the_line() {
    let dir = WorkDir::new("config");
    let file = write(
        &dir,
        "standby.toml",
        "# a standby\n[standby]\niface = [\"eth0\"]\nservice = [\"198.18.1.2:7000\"]\n\
         \n\nring_size = \"16Q\"\n",
    );
    let path = file.to_str().unwrap();

    let run = connmirror(&["standby", "--config", path]);
    let check = connmirror(&["config", "check", path]);

    let expected = format!(
        "error: {path}:7: key \"standby.ring_size\": invalid value \"16Q\": \"16Q\" is not a size\n"
    );
    for out in [run, check] {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(text(&out.stderr), expected);
        assert_eq!(text(&out.stdout), "", "must not claim to be ready");
    }
}

#[test]
fn a_config_file_with_an_unknown_key_or_bad_syntax_names_the_line() {
    let dir = WorkDir::new("config");
    let unknown = write(
        &dir,
        "unknown.toml",
        "[agent]\nnode_id = \"p\"\nmissed = 4\n",
    );
    let syntax = write(&dir, "syntax.toml", "[mirror]\niface = [\"eth0\"\n");
    let (unknown, syntax) = (unknown.to_str().unwrap(), syntax.to_str().unwrap());

    let unknown_out = connmirror(&["agent", "--config", unknown]);
    let syntax_out = connmirror(&["mirror", "--config", syntax]);

    assert_eq!(unknown_out.status.code(), Some(1));
    assert_eq!(
        text(&unknown_out.stderr),
        format!(
            "error: {unknown}:3: key \"agent.missed\": unknown key: `connmirror agent` \
             has no flag --missed\n"
        )
    );
    assert_eq!(syntax_out.status.code(), Some(1));
    assert_eq!(
        text(&syntax_out.stderr),
        format!("error: {syntax}:2: unclosed array, expected `]`\n")
    );
}

/// The file alone gives the required flags (the run fails on the file's
/// interface); `--iface`, `--dump-dir` and `--control` on the command line
/// replace the file's values (the run works, and the file's paths stay
/// unused); `status --config` takes the standby's control socket from the
/// file unless `--control` overrides it.
#[test]
fn command_line_flags_override_the_config_file() {
    require_root();
    let ns = Netns::new("config");
    let dir = WorkDir::new("config");
    let file_dump = dir.path().join("file-dump");
    let file_control = dir.path().join("file-control.sock");
    let file = write(
        &dir,
        "connmirror.toml",
        &format!(
            "[mirror]\niface = [\"cm-nosuch0\"]\nservice = [\"{SERVICE}\"]\n\n\
             [standby]\niface = [\"cm-nosuch0\"]\nservice = [\"{SERVICE}\"]\n\
             ingress = \"tc\"\negress = \"none\"\ndump_dir = {:?}\ncontrol = {:?}\n",
            file_dump.display(),
            file_control.display()
        ),
    );
    let config = file.to_str().unwrap();

    let from_file = MirrorExit::run(
        &ns,
        &[],
        &MirrorCommand::new().arg("--config").arg(config),
        &dir.path().join("unused"),
        TIMEOUT,
    );
    let standby = Mirror::start(
        &ns,
        &MirrorCommand::standby()
            .arg("--config")
            .arg(config)
            .iface("lo"),
    );
    let control = standby.control_socket();
    let status_from_file = status(&ns, &["--config", config]);
    let status_overridden = status(
        &ns,
        &[
            "--config",
            config,
            "--control",
            control.to_str().unwrap(),
            "--json",
        ],
    );
    let (report, _dir) = standby.stop();

    assert_eq!(from_file.status.code(), Some(1), "{from_file:#?}");
    assert_eq!(
        from_file.error_lines(),
        [r#"error: interface "cm-nosuch0" does not exist"#]
    );
    assert_eq!(status_from_file.status.code(), Some(1));
    assert_eq!(
        text(&status_from_file.stderr),
        format!(
            "error: connect to {}: No such file or directory (os error 2)\n",
            file_control.display()
        )
    );
    assert!(status_overridden.status.success(), "{status_overridden:?}");
    let status: serde_json::Value = serde_json::from_slice(&status_overridden.stdout).unwrap();
    assert_eq!(status["role"], "standby", "{status:#}");
    assert_eq!(report.takeovers.len(), 0);
    assert!(!exists(&file_dump), "the file's dump_dir was used");
    assert!(!exists(&file_control), "the file's control socket was used");
}

fn status(ns: &Netns, args: &[&str]) -> Output {
    let mut cmd = ns.command(connmirror_bin());
    cmd.arg("status").args(args);
    output_with_timeout(&mut cmd, TIMEOUT)
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[test]
fn every_example_config_passes_the_check() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap_or_else(|e| panic!("read {}: {e}", examples.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "capture-mirror.toml",
            "inline-standby.toml",
            "onhost-primary.toml",
            "onhost-standby.toml",
            "primary-agent.toml"
        ]
    );

    let tables: Vec<String> = files
        .iter()
        .map(|file| {
            let out = connmirror(&["config", "check", file.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                file.display(),
                text(&out.stderr)
            );
            text(&out.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();

    assert_eq!(
        tables,
        ["[mirror]", "[standby]", "[agent]", "[standby]", "[agent]"]
    );
}

/// `--help` shows `--config` and the defaults, on each daemon.
#[test]
fn help_explains_config_and_shows_defaults() {
    let standby = text(&connmirror(&["standby", "--help"]).stdout);
    let agent = text(&connmirror(&["agent", "--help"]).stdout);

    for help in [&standby, &agent] {
        assert!(help.contains("      --config <FILE>\n"), "{help}");
    }
    assert!(standby.contains("[default: 16M]"), "{standby}");
    assert!(
        standby.contains("[default: /run/connmirror/control.sock]"),
        "{standby}"
    );
    assert!(agent.contains("[default: 25]"), "{agent}");
}
