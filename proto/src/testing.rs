//! For the test suites of every crate: what a missing reference tool (torchvision,
//! scikit-learn, promtool, a built binary) means. Locally the test says `SKIPPED` and
//! returns; under CI it fails, so a skip is never counted as a pass.

/// Whether this is a CI run: `CI` is `true` or `1` (any case).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A test cannot run because `problem` (with what to do about it): panics under CI, else
/// prints `SKIPPED: problem` to stderr for the test to return early.
pub fn skip_unless_ci(problem: &str) {
    assert!(!under_ci(), "{problem} (CI: a missing reference tool fails the test)");
    eprintln!("SKIPPED: {problem}");
}
