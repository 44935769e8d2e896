//! The checkout: the commit resolved in the host's mirror, copied from it into
//! a new repository in the workspace (its object files copied, no alternates
//! to the host, no inode shared with it), measured against `source_max_mb` before a file is written, checked
//! out with no hook, its `origin` the remote's URL, its submodules (one level)
//! each from a mirror of its own, all owned by the job's user.

use std::path::{Component, Path};

use tokio::time::Instant;

use super::{Source, SourceReport};
use crate::config::ProfileGit;
use crate::host::git::{Credential, GitError, Mirrors, Resolved, Want};
use crate::host::secrets::Secrets;
use crate::rules::git::{check_remote_url, remote_allowed};

/// Why the source could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("source {repo}: {bytes} bytes checked out, over source_max_mb = {max_mb}; refusing it")]
    TooBig {
        repo: String,
        bytes: u64,
        max_mb: u64,
    },
    #[error("source {repo}: submodule {path:?} has the URL {url:?}: {rule}; refusing it")]
    Submodule {
        repo: String,
        path: String,
        url: String,
        rule: String,
    },
    #[error(
        "source {repo}: the profile's git_credentials name secret {name:?}, which is not in the bundle"
    )]
    NoCredential { repo: String, name: String },
    #[error("source {repo}: the workspace {path}: {error}")]
    Workspace {
        repo: String,
        path: String,
        error: std::io::Error,
    },
}

impl SourceError {
    /// What the job (its repository) got wrong: `failed`, never retried.
    pub fn is_job_fault(&self) -> bool {
        match self {
            SourceError::Git(error) => error.is_job_fault(),
            SourceError::TooBig { .. } | SourceError::Submodule { .. } => true,
            SourceError::NoCredential { .. } | SourceError::Workspace { .. } => false,
        }
    }
}

/// Checks `source` out into `root` (the workspace volume's folder on the
/// host), owned by `owner` (uid, gid); what the result records of it.
pub async fn place(
    mirrors: &Mirrors,
    secrets: &Secrets,
    source: &Source,
    root: &Path,
    owner: (u32, u32),
) -> Result<SourceReport, SourceError> {
    let credential = credential(secrets, &source.git, &source.repo)?;
    let resolved = mirrors
        .resolve(&source.repo, &source.want, credential.as_ref())
        .await?;
    let clock = Instant::now();
    let budget = Budget {
        max: source.max_bytes,
        repo: &source.repo,
    };
    let mut bytes = into(
        mirrors,
        &source.repo,
        &resolved,
        source.depth,
        root,
        &budget,
        0,
    )
    .await?;
    if source.submodules {
        bytes = submodules(
            mirrors,
            secrets,
            source,
            &resolved.sha,
            root,
            &budget,
            bytes,
        )
        .await?;
    }
    let owning = Instant::now();
    if owner != (0, 0) {
        own(root, owner).map_err(|error| SourceError::Workspace {
            repo: source.repo.clone(),
            path: root.display().to_string(),
            error,
        })?;
    }
    tracing::info!(
        own_ms = owning.elapsed().as_millis() as u64,
        "Checkout owned."
    );
    Ok(SourceReport {
        repo: source.repo.clone(),
        sha: resolved.sha,
        reference: resolved.reference,
        mirror: resolved.mirror.as_str().to_owned(),
        fetch_ms: resolved.fetch_ms,
        checkout_ms: clock.elapsed().as_millis() as u64,
        bytes,
    })
}

/// The pool secret the profile names for `url`'s remote, as a credential.
fn credential(
    secrets: &Secrets,
    git: &ProfileGit,
    url: &str,
) -> Result<Option<Credential>, SourceError> {
    let Some(name) = git.credential_for(url) else {
        return Ok(None);
    };
    let value = secrets.get(name).ok_or_else(|| SourceError::NoCredential {
        repo: url.to_owned(),
        name: name.to_owned(),
    })?;
    Ok(Some(Credential::from_secret(url, value.expose())))
}

/// The most a checkout may weigh, and whose it is.
struct Budget<'a> {
    max: u64,
    repo: &'a str,
}

impl Budget<'_> {
    fn check(&self, bytes: u64) -> Result<u64, SourceError> {
        if bytes > self.max {
            return Err(SourceError::TooBig {
                repo: self.repo.to_owned(),
                bytes,
                max_mb: self.max / 1_000_000,
            });
        }
        Ok(bytes)
    }
}

/// A new repository in `dir` holding `resolved`'s commit (and `depth` of its
/// history), checked out once its size with the `used` bytes before it fits;
/// the bytes used then.
async fn into(
    mirrors: &Mirrors,
    repo: &str,
    resolved: &Resolved,
    depth: Option<u32>,
    dir: &Path,
    budget: &Budget<'_>,
    used: u64,
) -> Result<u64, SourceError> {
    let sha = resolved.sha.as_str();
    let clock = Instant::now();
    copy_objects(mirrors, repo, resolved, depth, dir).await?;
    let copied = clock.elapsed();
    let files = mirrors
        .git(dir, repo, "ls-tree")
        .args(["ls-tree", "-r", "-l", "-z", "--end-of-options", sha])
        .run()
        .await?;
    let tree_bytes: u64 = files
        .split('\0')
        .filter_map(|entry| entry.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum();
    let git_bytes = du(&dir.join(".git"));
    let used = budget.check(used + git_bytes + tree_bytes)?;
    let measured = clock.elapsed();
    let branch = resolved
        .reference
        .as_deref()
        .and_then(|r| r.strip_prefix("refs/heads/"));
    let checkout = match branch {
        Some(branch) => vec!["checkout", "--quiet", "-B", branch, sha],
        None => vec!["checkout", "--quiet", "--detach", sha],
    };
    mirrors
        .git(dir, repo, "checkout")
        .args(checkout)
        .run()
        .await?;
    // Each step's share, for the bench's account of where a checkout goes.
    tracing::info!(
        repo,
        copy_ms = copied.as_millis() as u64,
        size_ms = (measured - copied).as_millis() as u64,
        checkout_ms = (clock.elapsed() - measured).as_millis() as u64,
        "Checkout steps."
    );
    mirrors
        .git(dir, repo, "remote")
        .args(["remote", "add", "origin", repo])
        .run()
        .await?;
    Ok(used)
}

/// The mirror's objects into a new repository in `dir`, without a checkout.
/// Whole, the mirror's pack and object files are copied one by one
/// ([`copy_store`]) and its branches and tags written as the clone's refs
/// (`refs/remotes/origin/*`, `refs/tags/*`); `depth` commits deep, a fetch
/// through `file://`. Neither leaves the mirror's path behind: no reflog, no
/// FETCH_HEAD, no alternates; `origin` is the remote's URL.
async fn copy_objects(
    mirrors: &Mirrors,
    repo: &str,
    resolved: &Resolved,
    depth: Option<u32>,
    dir: &Path,
) -> Result<(), GitError> {
    mirrors
        .git(dir, repo, "init")
        .args(["init", "--quiet", "--template=", "."])
        .run()
        .await?;
    let Some(depth) = depth else {
        let (from, to) = (resolved.dir.join("objects"), dir.join(".git/objects"));
        tokio::task::spawn_blocking(move || copy_store(&from, &to))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|source| GitError::Io {
                path: resolved.dir.clone(),
                source,
            })?;
        let refs = mirrors
            .git(&resolved.dir, repo, "for-each-ref")
            .args([
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "refs/heads/",
                "refs/tags/",
            ])
            .run()
            .await?;
        let mut updates = String::new();
        for (sha, name) in refs.lines().filter_map(|l| l.split_once(' ')) {
            let name = match name.strip_prefix("refs/heads/") {
                Some(branch) => format!("refs/remotes/origin/{branch}"),
                None => name.to_owned(),
            };
            updates.push_str(&format!("create {name} {sha}\n"));
        }
        return mirrors
            .git(dir, repo, "update-ref")
            .args(["-c", "core.logAllRefUpdates=false", "update-ref", "--stdin"])
            .stdin(updates)
            .run()
            .await
            .map(drop);
    };
    let from = format!("file://{}", resolved.dir.display());
    mirrors
        .git(dir, repo, "fetch (from the mirror)")
        .allow_file()
        .args(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"])
        .arg_str(&format!("--depth={depth}"))
        .args(["--end-of-options", &from, &resolved.sha])
        .run()
        .await
        .map(drop)
}

/// Copies a mirror's `objects` folder's packs (each with its index) and loose
/// objects into `to`, a new repository's. Not `git clone --no-hardlinks`,
/// which copies with `read`/`write` through user space (about 0.3 s of a
/// 200 MB checkout's 0.8 s here): `std::fs::copy` is `copy_file_range`, which
/// the kernel does in place, and on a filesystem with reflinks (XFS, btrfs)
/// shares the blocks copy-on-write, so nothing is copied until written. Either
/// way the files are the job's own, never the mirror's inodes (a hardlink
/// would let a job that is root in its container rewrite the mirror's pack in
/// place for every later job): self-contained. The mirror only ever gains
/// files (its writers rename them in whole, nothing repacks it), so a fetch
/// into it meanwhile adds files this may or may not see; the wanted commit's
/// objects are there already.
fn copy_store(from: &Path, to: &Path) -> std::io::Result<()> {
    let packs = to.join("pack");
    std::fs::create_dir_all(&packs)?;
    for entry in std::fs::read_dir(from.join("pack"))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".idx")) else {
            continue;
        };
        let pack = format!("{stem}.pack");
        if !entry.path().with_file_name(&pack).is_file() {
            continue;
        }
        std::fs::copy(from.join("pack").join(&pack), packs.join(&pack))?;
        std::fs::copy(entry.path(), packs.join(&name))?;
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let fan_out = name.len() == 2
            && name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
        if !fan_out || !entry.file_type()?.is_dir() {
            continue;
        }
        let into = to.join(&name);
        std::fs::create_dir_all(&into)?;
        for object in std::fs::read_dir(entry.path())? {
            let object = object?;
            let loose = object.file_name().len() == 38 && object.file_type()?.is_file();
            if loose {
                std::fs::copy(object.path(), into.join(object.file_name()))?;
            }
        }
    }
    Ok(())
}

/// Each submodule the commit records (one level), from its own mirror, if its
/// URL is under the profile's remotes; the bytes used then.
async fn submodules(
    mirrors: &Mirrors,
    secrets: &Secrets,
    source: &Source,
    sha: &str,
    root: &Path,
    budget: &Budget<'_>,
    mut used: u64,
) -> Result<u64, SourceError> {
    let gitmodules = root.join(".gitmodules");
    if !gitmodules.symlink_metadata().is_ok_and(|m| m.is_file()) {
        return Ok(used);
    }
    let repo = source.repo.as_str();
    let tree = mirrors
        .git(root, repo, "ls-tree")
        .args(["ls-tree", "-r", "-z", "--end-of-options", sha])
        .run()
        .await?;
    // `submodule.NAME.path\nVALUE` and `.url`, NUL-separated.
    let declared = mirrors
        .git(root, repo, "config (.gitmodules)")
        .args([
            "config",
            "-f",
            ".gitmodules",
            "-z",
            "--get-regexp",
            r"^submodule\..*\.(path|url)$",
        ])
        .run()
        .await
        .unwrap_or_default();
    let setting = |name: &str, key: &str| {
        declared.split('\0').find_map(|entry| {
            let (k, v) = entry.split_once('\n')?;
            (k == format!("submodule.{name}.{key}")).then(|| v.to_owned())
        })
    };
    for entry in tree.split('\0') {
        let Some((meta, path)) = entry.split_once('\t') else {
            continue;
        };
        let meta: Vec<&str> = meta.split(' ').collect();
        if meta.first() != Some(&"160000") {
            continue;
        }
        let sub_sha = meta.get(2).copied().unwrap_or_default().to_owned();
        let name = declared.split('\0').find_map(|e| {
            let (k, v) = e.split_once('\n')?;
            (v == path).then(|| k.strip_prefix("submodule.")?.strip_suffix(".path"))?
        });
        let url = name.and_then(|n| setting(n, "url")).unwrap_or_default();
        let url = absolute(repo, &url);
        let refuse = |rule: String| SourceError::Submodule {
            repo: repo.to_owned(),
            path: path.to_owned(),
            url: url.clone(),
            rule,
        };
        check_remote_url(&url).map_err(refuse)?;
        if !remote_allowed(&url, &source.git.remotes) {
            return Err(refuse("not under the profile's git_remotes".to_owned()));
        }
        let dir = inside(root, path)
            .ok_or_else(|| refuse("its path passes through a symlink".to_owned()))?;
        let credential = credential(secrets, &source.git, &url)?;
        let resolved = mirrors
            .resolve(&url, &Want::Sha(sub_sha), credential.as_ref())
            .await?;
        std::fs::create_dir_all(&dir).map_err(|error| SourceError::Workspace {
            repo: repo.to_owned(),
            path: path.to_owned(),
            error,
        })?;
        used = into(mirrors, &url, &resolved, None, &dir, budget, used).await?;
    }
    Ok(used)
}

/// A submodule URL relative to its superproject's (`../lib.git`) made absolute.
fn absolute(repo: &str, url: &str) -> String {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return url.to_owned();
    }
    let mut base: Vec<&str> = repo.trim_end_matches('/').split('/').collect();
    for part in url.split('/') {
        match part {
            "." => {}
            ".." => {
                base.pop();
            }
            other => base.push(other),
        }
    }
    base.join("/")
}

/// `root/path`, unless a part of it on the way is a symlink.
fn inside(root: &Path, path: &str) -> Option<std::path::PathBuf> {
    let mut at = root.to_path_buf();
    for component in Path::new(path).components() {
        let Component::Normal(name) = component else {
            return None;
        };
        at.push(name);
        if at
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return None;
        }
    }
    Some(at)
}

/// What the files under `dir` weigh, links not followed.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => du(&entry.path()),
            Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Gives `dir` and everything under it to the job's user, links not followed.
fn own(dir: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            own(&entry.path(), (uid, gid))?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn relative_submodule_urls_resolve_against_the_repository() {
        let repo = "https://git.example.com/org/app.git";
        assert_eq!(
            super::absolute(repo, "../lib.git"),
            "https://git.example.com/org/lib.git"
        );
        assert_eq!(
            super::absolute(repo, "../../x/y.git"),
            "https://git.example.com/x/y.git"
        );
        assert_eq!(super::absolute(repo, "git://a/b.git"), "git://a/b.git");
    }
}
