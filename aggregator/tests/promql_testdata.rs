//! Runs Prometheus 2.42's own PromQL test files (kept beside the design brief
//! in `shared/promql-testdata/`) through Herd's engine: every eval must pass.

use std::path::PathBuf;

use herd_aggregator::promql::testfile::{Report, run_file};

#[test]
fn every_eval_in_the_reference_files_passes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/promql-testdata");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .test files in {}", dir.display());
    let mut report = Report::default();
    for file in &files {
        report.merge(run_file(file).unwrap_or_else(|e| panic!("{e}")));
    }
    let failures: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
    assert_eq!(report.failed, 0, "{}\n{}", failures.join("\n"), report.summary());
    assert!(report.passed >= 280, "only {} evals ran", report.passed);
}
