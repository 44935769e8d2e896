//! The host's git mirrors, driven through the library against the stack's git
//! daemon and a remote that never answers: two jobs of one repository waiting
//! on the same fetch share it; a fetch past `git.fetch_timeout_secs`, or one
//! whose job is dropped (a cancel, the drain), leaves no git process behind.

mod common;

use std::time::Duration;

use common::git::{GitServer, TestRepo};
use common::*;
use deckhand::host::git::{Credential, GitError, MirrorState, Mirrors, Want};

fn mirrors(dir: &std::path::Path, timeout: Duration) -> Mirrors {
    Mirrors::new(dir.join("git"), dir.join("scratch"), timeout).unwrap()
}

/// The git processes whose command line names `needle`.
fn git_processes(needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("git") && c.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_jobs_waiting_on_one_fetch_share_it() {
    let Some(_stack) = Stack::or_skip() else {
        return;
    };
    let server = GitServer::from_env();
    let repo = TestRepo::new(&server, "shared");
    let sha = repo.commit(&[("VERSION", b"1\n")], "one");
    let dir = tempfile::tempdir().unwrap();
    let mirrors = mirrors(dir.path(), LONG);
    let url = repo.daemon_url();
    let want = Want::Ref("main".to_owned());
    let (a, b) = tokio::join!(
        mirrors.resolve(&url, &want, None),
        mirrors.resolve(&url, &want, None)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        (a.sha.as_str(), b.sha.as_str()),
        (sha.as_str(), sha.as_str())
    );
    assert_eq!(a.mirror, MirrorState::Cold);
    // The second waited behind the first's fetch and took it.
    assert_eq!(b.mirror, MirrorState::Hit);
    assert_eq!(b.fetch_ms, 0);
    assert!(mirrors.is_warm(&url));
}

/// A git:// remote that accepts connections and never says a word.
async fn silent_remote(scheme: &str) -> (tokio::task::JoinHandle<()>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serve = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (serve, format!("{scheme}://127.0.0.1:{port}/silent.git"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_past_its_timeout_or_dropped_leaves_no_git_behind() {
    let Some(_stack) = Stack::or_skip() else {
        return;
    };
    // Over HTTP git runs a helper (`git-remote-http`) that must go too.
    let (serve, url) = silent_remote("http").await;
    let dir = tempfile::tempdir().unwrap();
    let mirrors = mirrors(dir.path(), Duration::from_secs(2));
    let want = Want::Ref("main".to_owned());
    let error = mirrors.resolve(&url, &want, None).await.unwrap_err();
    assert!(
        matches!(error, GitError::TimedOut { secs: 2, .. }),
        "{error}"
    );
    assert!(!error.is_job_fault());
    eventually("the timed-out git to be gone", LONG, || async {
        git_processes(&url) == 0
    })
    .await;

    // A cancel drops the checkout's future, and git with it.
    serve.abort();
    let (serve, url) = silent_remote("git").await;
    let mirrors = self::mirrors(dir.path(), LONG);
    let fetching = mirrors.resolve(&url, &want, None);
    let dropped = tokio::time::timeout(Duration::from_millis(1500), fetching).await;
    assert!(dropped.is_err(), "the silent remote answered");
    eventually("the dropped git to be gone", LONG, || async {
        git_processes(&url) == 0
    })
    .await;
    serve.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_remote_wants_the_credential_and_its_refusal_is_the_hosts() {
    let Some(_stack) = Stack::or_skip() else {
        return;
    };
    let server = GitServer::from_env();
    let repo = TestRepo::new(&server, "private");
    let sha = repo.commit(&[("VERSION", b"1\n")], "one");
    let dir = tempfile::tempdir().unwrap();
    let mirrors = mirrors(dir.path(), LONG);
    let url = repo.http_url();
    let want = Want::Sha(sha.clone());
    let error = mirrors.resolve(&url, &want, None).await.unwrap_err();
    assert!(matches!(error, GitError::Auth { .. }), "{error}");
    assert!(!error.is_job_fault(), "a refused credential is retried");
    let wrong = Credential::from_secret(&url, &format!("{}:wrong", server.user));
    let error = mirrors
        .resolve(&url, &want, Some(&wrong))
        .await
        .unwrap_err();
    assert!(matches!(error, GitError::Auth { .. }), "{error}");
    assert!(!error.to_string().contains("wrong"), "{error}");
    let right = Credential::from_secret(&url, &format!("{}:{}", server.user, server.password));
    let resolved = mirrors.resolve(&url, &want, Some(&right)).await.unwrap();
    assert_eq!(resolved.sha, sha);
}
