//! The standby's control socket and `connmirror takeover`: owner-only sockets,
//! forged or malformed requests refused with exact reasons and counted, and
//! clear errors when the standby cannot do what is asked.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;

use connmirror_tests::failover::{run_takeover, standby_command, takeover};
use connmirror_tests::mirror::{Mirror, MirrorExit};
use connmirror_tests::topology::{Family, Topology};
use connmirror_tests::workdir::WorkDir;

/// Sends `bytes` on a fresh connection to the control socket; returns the
/// answer line.
fn send_raw(control: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(control).expect("connect to the control socket");
    stream.write_all(bytes).expect("write the request");
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .expect("read the answer");
    answer
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn control_socket_refuses_forged_requests_and_counts_them() {
    connmirror_tests::require_root();
    let topo = Topology::new();
    let service = topo.service(Family::V4, 7000);
    let standby = Mirror::start(
        &topo.gateway,
        &standby_command(&topo, &service.to_string()).without_dumps(),
    );
    let control = standby.control_socket();
    let modes = (mode(&control), mode(&standby.handoff_socket()));

    let answers = [
        send_raw(&control, b"take over please\n"),
        send_raw(
            &control,
            b"{\"command\":\"takeover\",\"services\":null,\"epoch\":9}\n",
        ),
        send_raw(&control, b"{\"command\":\"detach\"}\n"),
        send_raw(&control, &[b'{'; 70_000]),
    ];
    let (ok, _, nobody) = run_as_nobody(&topo, &control);
    let report = takeover(&topo.gateway, &control, &[]);
    let (_, _, again) = run_takeover(&topo.gateway, &control, &[]);
    let (_, _, unknown) = run_takeover(&topo.gateway, &control, &["--service", "198.18.9.9:1"]);
    let (final_report, _dir) = standby.stop();

    assert_eq!(modes, (0o600, 0o600));
    assert_eq!(
        answers,
        [
            "{\"error\":\"malformed control request: expected ident at line 1 column 2\"}\n",
            "{\"error\":\"malformed control request: unknown field `epoch`, expected \
             `services`\"}\n",
            "{\"error\":\"malformed control request: unknown variant `detach`, expected one \
             of `takeover`, `status`, `migrate` at line 1 column 19\"}\n",
            "{\"error\":\"request longer than 65536 bytes\"}\n",
        ]
    );
    assert!(!ok);
    assert_eq!(
        nobody.trim_end(),
        format!(
            "error: connect to {}: Permission denied (os error 13)",
            control.display()
        )
    );
    assert_eq!(report.services, vec![service]);
    assert_eq!((report.restored, report.unrecoverable_total()), (0, 0));
    assert_eq!(
        again.trim_end(),
        "error: the node refused: every service was already taken over"
    );
    assert_eq!(
        unknown.trim_end(),
        "error: the node refused: service 198.18.9.9:1 is not protected by this standby"
    );
    let summary = final_report.standby.expect("a standby's report");
    assert_eq!(summary.control_rejected, 4);
    assert_eq!(final_report.takeovers, vec![report]);
}

/// `connmirror takeover` as uid 65534 (mode 0600 keeps it out).
fn run_as_nobody(topo: &Topology, control: &Path) -> (bool, String, String) {
    let mut cmd = topo.gateway.command("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(connmirror_tests::connmirror_bin())
        .arg("takeover")
        .arg("--control")
        .arg(control);
    let out = connmirror_tests::process::output_with_timeout(
        &mut cmd,
        std::time::Duration::from_secs(30),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn takeover_without_a_standby_names_the_socket() {
    connmirror_tests::require_root();
    let dir = WorkDir::new("control");
    let control = dir.path().join("none.sock");
    let ns = connmirror_tests::Netns::new("control");

    let (ok, _, stderr) = run_takeover(&ns, &control, &[]);

    assert!(!ok);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: connect to {}: No such file or directory (os error 2)",
            control.display()
        )
    );
}

#[test]
fn standby_refuses_a_resume_for_an_unprotected_service() {
    connmirror_tests::require_root();
    let topo = Topology::new();
    let dir = WorkDir::new("control");
    let command = standby_command(&topo, "198.18.1.2:7000")
        .arg("--resume")
        .arg("198.18.1.2:7001=handoff");

    let exit = MirrorExit::run(
        &topo.gateway,
        &[],
        &command,
        dir.path(),
        std::time::Duration::from_secs(60),
    );

    assert_eq!(exit.status.code(), Some(1));
    assert_eq!(
        exit.error_lines(),
        ["error: --resume names 198.18.1.2:7001, which is not a --service"]
    );
}
