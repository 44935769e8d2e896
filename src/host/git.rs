//! The host's git mirrors: one bare repository per remote under
//! `<work_dir>/git/`, named by a hash of its URL, kept across jobs and fetched
//! into under a per-repository lock (jobs of one repository that wait on the same
//! fetch share it), seeded at boot from S3 bundles. A job's checkout reads from
//! here (the job's side is `job/source.rs`); only the fetch into a mirror talks to the
//! remote, with the pool's credential.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

mod command;
mod seed;
pub use command::{Credential, Git, GitError};
pub use seed::{SeedError, seed_all};

/// What a job wants of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A commit, 40 lower-case hex digits.
    Sha(String),
    /// A branch or tag name, resolved after a fetch.
    Ref(String),
}

/// How warm the mirror was for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorState {
    /// It was there (a fetch, if any, brought only what is new).
    Hit,
    /// Its first use since a boot seed made it.
    Seeded,
    /// Empty: cloned from the remote for this job.
    Cold,
}

impl MirrorState {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorState::Hit => "hit",
            MirrorState::Seeded => "seeded",
            MirrorState::Cold => "cold",
        }
    }
}

/// A commit in a mirror, ready to be checked out.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub sha: String,
    /// The full name a `ref` resolved to (`refs/heads/main`).
    pub reference: Option<String>,
    pub mirror: MirrorState,
    /// Time spent fetching (0: no fetch).
    pub fetch_ms: u64,
    /// The mirror's folder.
    pub dir: PathBuf,
}

/// The mirrors of one host.
pub struct Mirrors {
    root: PathBuf,
    /// Where deploy keys go for the length of one ssh (a tmpfs).
    scratch: PathBuf,
    /// The host keys an `ssh://` remote must have (`git.known_hosts`); `None`:
    /// trusted on first use, kept in `scratch/known_hosts`.
    known_hosts: Option<PathBuf>,
    pub fetch_timeout: Duration,
    repos: Mutex<HashMap<String, Arc<tokio::sync::Mutex<RepoState>>>>,
}

/// What the agent knows of one mirror, under its lock.
#[derive(Default)]
struct RepoState {
    /// When its last fetch ended: a job that began waiting before then shares it.
    fetched_at: Option<Instant>,
    /// Seeded at boot and not yet used.
    seeded: bool,
}

/// The refs a mirror keeps: branches and tags (not a forge's pull refs).
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

impl Mirrors {
    /// Mirrors under `root` (`<work_dir>/git`), made if missing.
    pub fn new(root: PathBuf, scratch: PathBuf, fetch_timeout: Duration) -> Result<Self, GitError> {
        std::fs::create_dir_all(root.join("home")).map_err(GitError::io(&root))?;
        Ok(Mirrors {
            root,
            scratch,
            known_hosts: None,
            fetch_timeout,
            repos: Mutex::default(),
        })
    }

    /// `ssh://` remotes' host keys checked against this file (`git.known_hosts`).
    pub fn with_known_hosts(mut self, known_hosts: Option<PathBuf>) -> Self {
        self.known_hosts = known_hosts;
        self
    }

    /// The mirror's folder: a hash of the URL, safe whatever the URL holds.
    pub fn dir_of(&self, url: &str) -> PathBuf {
        let digest = Sha256::digest(url.as_bytes());
        self.root
            .join(format!("{}.git", &hex::encode(digest)[..40]))
    }

    /// Where the mirrors are.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a mirror of `url` with branches or tags is on this host.
    pub fn is_warm(&self, url: &str) -> bool {
        let dir = self.dir_of(url);
        let any =
            |sub: &str| std::fs::read_dir(dir.join(sub)).is_ok_and(|mut d| d.next().is_some());
        dir.join("HEAD").exists()
            && (dir.join("packed-refs").exists() || any("refs/heads") || any("refs/tags"))
    }

    /// An empty folder git may call home.
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    /// A hardened git process in `dir`, with the fetch timeout.
    pub fn git<'a>(&self, dir: &Path, repo: &'a str, operation: &'static str) -> Git<'a> {
        Git::new(dir, &self.home(), repo, operation).timeout(self.fetch_timeout)
    }

    fn state_of(&self, url: &str) -> Arc<tokio::sync::Mutex<RepoState>> {
        let mut repos = self.repos.lock().unwrap_or_else(|e| e.into_inner());
        repos.entry(url.to_owned()).or_default().clone()
    }

    /// The commit `want` names, in the mirror of `url`: fetched first unless a
    /// wanted commit is there already or a fetch ended while this job waited.
    pub async fn resolve(
        &self,
        url: &str,
        want: &Want,
        credential: Option<&Credential>,
    ) -> Result<Resolved, GitError> {
        let asked = Instant::now();
        let state = self.state_of(url);
        let mut state = tokio::time::timeout(self.fetch_timeout, state.lock())
            .await
            .map_err(|_| GitError::Busy {
                repo: url.to_owned(),
                secs: self.fetch_timeout.as_secs(),
            })?;
        let dir = self.dir_of(url);
        let warm = self.ensure(url, &dir).await?;
        let mut mirror = match (warm, state.seeded) {
            (_, true) => MirrorState::Seeded,
            (true, false) => MirrorState::Hit,
            (false, false) => MirrorState::Cold,
        };
        state.seeded = false;
        let shared = state.fetched_at.is_some_and(|at| at >= asked);
        let present = match want {
            Want::Sha(sha) => self.has_commit(&dir, url, sha).await,
            Want::Ref(_) => shared,
        };
        let started = Instant::now();
        if !present && !shared {
            self.fetch(url, &dir, &REFSPECS, credential).await?;
            state.fetched_at = Some(Instant::now());
            tracing::info!(
                repo = url,
                mirror = mirror.as_str(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Mirror fetched."
            );
        } else if shared && !present {
            mirror = MirrorState::Hit;
        }
        let (sha, reference) = match want {
            Want::Sha(sha) => {
                if !self.has_commit(&dir, url, sha).await {
                    self.fetch_one(url, &dir, sha, credential).await?;
                }
                (sha.clone(), None)
            }
            Want::Ref(name) => {
                let (full, sha) = self.resolve_ref(&dir, url, name).await?;
                (sha, Some(full))
            }
        };
        Ok(Resolved {
            sha,
            reference,
            mirror,
            fetch_ms: if present {
                0
            } else {
                started.elapsed().as_millis() as u64
            },
            dir,
        })
    }

    /// Makes the mirror if it is missing, and clears the lock files a fetch
    /// killed halfway left (only this agent writes here, and it holds the lock).
    /// Whether it held any ref: warm.
    async fn ensure(&self, url: &str, dir: &Path) -> Result<bool, GitError> {
        if !dir.join("HEAD").exists() {
            let parent = dir.parent().unwrap_or(&self.root);
            let name = dir.file_name().unwrap_or_default();
            self.git(parent, url, "init")
                .args(["init", "--bare", "--quiet", "--template="])
                .arg_path(name)
                .run()
                .await?;
            // A job's repository fetches the one commit it needs by id.
            self.git(dir, url, "config")
                .args(["config", "uploadpack.allowAnySHA1InWant", "true"])
                .run()
                .await?;
            self.git(dir, url, "config")
                .args(["config", "deckhand.url", url])
                .run()
                .await?;
        }
        remove_locks(dir);
        let refs = self
            .git(dir, url, "for-each-ref")
            .args(["for-each-ref", "--count=1", "--format=%(refname)"])
            .run()
            .await?;
        Ok(!refs.trim().is_empty())
    }

    async fn has_commit(&self, dir: &Path, url: &str, sha: &str) -> bool {
        self.git(dir, url, "cat-file")
            .args(["cat-file", "-e", &format!("{sha}^{{commit}}")])
            .run()
            .await
            .is_ok()
    }

    /// Brings the mirror's branches and tags up to the remote's.
    async fn fetch(
        &self,
        url: &str,
        dir: &Path,
        refspecs: &[&str],
        credential: Option<&Credential>,
    ) -> Result<(), GitError> {
        self.git(dir, url, "fetch")
            .credential(credential, &self.scratch, self.known_hosts.as_deref())?
            .args([
                "fetch",
                "--quiet",
                "--prune",
                "--no-write-fetch-head",
                "--end-of-options",
                url,
            ])
            .args(refspecs)
            .run()
            .await
            .map(drop)
    }

    /// A commit no branch or tag has (a pull request's): asked for by id, kept
    /// under `refs/deckhand/` so no gc takes it. The remote answered the fetch
    /// before, so a refusal now means it lacks the commit.
    async fn fetch_one(
        &self,
        url: &str,
        dir: &Path,
        sha: &str,
        credential: Option<&Credential>,
    ) -> Result<(), GitError> {
        let refspec = format!("{sha}:refs/deckhand/{sha}");
        match self.fetch(url, dir, &[&refspec], credential).await {
            Ok(()) if self.has_commit(dir, url, sha).await => Ok(()),
            Ok(()) | Err(GitError::Failed { .. } | GitError::NoRepository { .. }) => {
                Err(GitError::MissingCommit {
                    repo: url.to_owned(),
                    sha: sha.to_owned(),
                })
            }
            Err(error) => Err(error),
        }
    }

    /// `name` as a full ref and its commit: `refs/…` as it is, else a branch,
    /// else a tag.
    async fn resolve_ref(
        &self,
        dir: &Path,
        url: &str,
        name: &str,
    ) -> Result<(String, String), GitError> {
        let candidates = if name.starts_with("refs/") {
            vec![name.to_owned()]
        } else {
            vec![format!("refs/heads/{name}"), format!("refs/tags/{name}")]
        };
        for full in candidates {
            let found = self
                .git(dir, url, "rev-parse")
                .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
                .arg_str(&format!("{full}^{{commit}}"))
                .run()
                .await;
            if let Ok(sha) = found {
                return Ok((full, sha.trim().to_owned()));
            }
        }
        Err(GitError::MissingRef {
            repo: url.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Makes the mirror of `url` from a bundle file (boot's seed), unless it is
    /// already there; its first job then reports `seeded`.
    pub async fn seed(&self, url: &str, bundle: &Path) -> Result<bool, GitError> {
        let state = self.state_of(url);
        let mut state = state.lock().await;
        let dir = self.dir_of(url);
        if self.ensure(url, &dir).await? {
            return Ok(false);
        }
        // The bundle is a local file: this one fetch may read it.
        self.git(&dir, url, "fetch (seed bundle)")
            .allow_file()
            .args([
                "fetch",
                "--quiet",
                "--no-write-fetch-head",
                "--end-of-options",
            ])
            .arg_path(bundle)
            .args(REFSPECS)
            .run()
            .await?;
        state.seeded = true;
        Ok(true)
    }
}

/// Removes `*.lock` files at the top of a mirror and under its `refs/`.
fn remove_locks(dir: &Path) {
    fn walk(dir: &Path, deep: bool) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && deep {
                walk(&path, true);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
                // One that cannot go will fail the fetch, which says so.
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    walk(dir, false);
    walk(&dir.join("refs"), true);
}
