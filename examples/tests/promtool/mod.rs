//! Finding and running `promtool` (Debian package `prometheus`), for the
//! exposition and deploy/ checks. Never skipped: without it those tests
//! fail and say how to get it (`scripts/test` installs it, as CI does).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `$PROMTOOL` if set, else `promtool` on `PATH`, else `/usr/bin/promtool`;
/// panics with what to do when there is none.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMTOOL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "PROMTOOL={} is not a file", p.display());
        return p;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    let fallback = Path::new("/usr/bin/promtool");
    on_path
        .or_else(|| fallback.is_file().then(|| fallback.to_owned()))
        .unwrap_or_else(|| {
            panic!(
                "promtool not found (not on PATH, not /usr/bin/promtool, PROMTOOL unset): \
                 install it with `apt-get install prometheus` (scripts/test does), \
                 or point PROMTOOL at the binary"
            )
        })
}

/// Runs `promtool args...` in `dir`, with `stdin` on its standard input.
pub fn run(args: &[&str], dir: &Path, stdin: Option<&str>) -> Output {
    let mut child = Command::new(path())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    // Dropped at the end of the statement: promtool sees end of input.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Standard output and error together, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
