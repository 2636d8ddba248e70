//! `connmirror mirror` fails clearly: exit code 1 and one `error: ...` line that
//! names the problem.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use connmirror_tests::{MirrorCommand, MirrorExit, Netns, WorkDir, connmirror_bin, require_root};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const SERVICE: &str = "198.18.1.2:7000";

#[test]
fn mirror_names_a_missing_interface() {
    require_root();
    connmirror_bin();
    let ns = Netns::new("cli");
    let dir = WorkDir::new("cli");

    let exit = MirrorExit::run(
        &ns,
        &[],
        &MirrorCommand::new()
            .iface("nosuch0")
            .service(SERVICE.parse().unwrap()),
        dir.path(),
        EXIT_TIMEOUT,
    );

    assert_fails_with(&exit, r#"error: interface "nosuch0" does not exist"#);
}

#[test]
fn mirror_without_privilege_fails_clearly() {
    require_root();
    connmirror_bin();
    let ns = Netns::new("cli");
    // The dump directory and the interface are fine, so privilege is the only
    // thing wrong.
    let dir = WorkDir::new("cli");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod dump dir");

    let exit = MirrorExit::run(
        &ns,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
        &MirrorCommand::new()
            .iface("lo")
            .service(SERVICE.parse().unwrap()),
        dir.path(),
        EXIT_TIMEOUT,
    );

    assert_fails_with(
        &exit,
        "error: connmirror mirror needs CAP_BPF and CAP_NET_ADMIN (run as root)",
    );
}

/// Exit code 1, exactly one `error:` line reading `line`, and nothing on stdout
/// (the mirror must not claim to be ready).
fn assert_fails_with(exit: &MirrorExit, line: &str) {
    assert_eq!(exit.status.code(), Some(1), "{exit:#?}");
    assert_eq!(exit.error_lines(), [line], "{exit:#?}");
    assert_eq!(exit.stdout, "", "must not claim to be ready");
}

/// `--replicate-to` needs the channel's key: without `--key` the usage error
/// names it; with a key file that is not there, the error names the file.
/// Neither attaches anything.
#[test]
fn a_replicating_mirror_names_its_missing_key() {
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(connmirror_bin());
        cmd.args(["mirror", "--iface", "lo", "--service", SERVICE])
            .args(["--replicate-to", "198.18.1.1:7402"])
            .args(extra);
        let out = cmd.output().expect("run connmirror");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: the following required arguments were not provided:\n  --key <PATH>\n"
        ),
        "{stderr}"
    );
    let dir = WorkDir::new("cli");
    let missing = dir.path().join("no-key");
    let (code, stderr) = run(&["--key", &missing.display().to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: reading the key file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}
