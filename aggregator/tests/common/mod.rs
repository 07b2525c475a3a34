//! Helpers shared by the aggregator's integration tests that run promtool.

use std::path::Path;
use std::process::Command;

/// Whether Debian's promtool is installed; a missing one fails the test
/// when `HERD_REQUIRE_PEERS=1`, and skips it otherwise.
pub fn promtool_available() -> bool {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("HERD_REQUIRE_PEERS").as_deref() != Ok("1"),
            "promtool is missing: apt-get install prometheus"
        );
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
    }
    found
}

/// Exit code and stdout plus stderr (promtool reports failures on stderr).
pub fn run(program: &str, args: &[&str], dir: &Path) -> (i32, String) {
    let output = Command::new(program).args(args).current_dir(dir).output().expect("run");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}
