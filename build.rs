//! Stamps the build with its git commit, for `throng --version` (`THRONG_GIT_COMMIT` set in the
//! environment wins, for builds from a source archive without `.git`).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=THRONG_GIT_COMMIT");
    let commit = std::env::var("THRONG_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=THRONG_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (branch switches) and the ref it names (new commits).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) {
        // `refs/heads` as a folder: a commit on a branch whose ref was packed creates a new file.
        let mut watch = vec![dir.join("HEAD"), dir.join("packed-refs"), dir.join("refs/heads")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(dir.join(r));
        }
        for p in watch.into_iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
