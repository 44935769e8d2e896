//! One `git` process, as the agent runs every one: a clean environment (no
//! user or system config, no prompt, the C locale so its errors can be read),
//! no hook, no `file` or `ext` transport unless the caller allows `file` for its
//! own mirror, killed when dropped or at its timeout; its errors sorted by cause
//! and masked of the credential it carried.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::process::Command;

/// What a fetch authenticates with: a pool secret, seen only by the agent's
/// git process, through its environment (never argv, never a file the job sees).
#[derive(Clone)]
pub enum Credential {
    /// HTTP basic auth: `USER:TOKEN`, or a bare token as `x-access-token`.
    Token { user: String, token: String },
    /// An SSH deploy key (a private key, OpenSSH or PEM).
    SshKey(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(***)")
    }
}

impl Credential {
    /// The credential a secret's value is, for a remote of `scheme`.
    pub fn from_secret(url: &str, value: &str) -> Credential {
        if url.starts_with("ssh://") {
            return Credential::SshKey(value.to_owned());
        }
        let value = value.trim();
        match value.split_once(':') {
            Some((user, token)) => Credential::Token {
                user: user.to_owned(),
                token: token.to_owned(),
            },
            None => Credential::Token {
                user: "x-access-token".to_owned(),
                token: value.to_owned(),
            },
        }
    }

    fn basic(user: &str, token: &str) -> String {
        STANDARD.encode(format!("{user}:{token}"))
    }

    /// Every form of it an error text could carry.
    fn forms(&self) -> Vec<String> {
        match self {
            Credential::Token { user, token } => vec![Self::basic(user, token), token.clone()],
            Credential::SshKey(key) => key.lines().map(str::to_owned).collect(),
        }
    }
}

/// A deploy key on the agent's tmpfs for one ssh, removed when dropped.
struct KeyFile(std::path::PathBuf);

impl KeyFile {
    fn write(scratch: &Path, key: &str) -> Result<KeyFile, GitError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = scratch.join(format!("git-key-{}", crate::rules::random_hex(8)));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(GitError::io(&path))?;
        let key_file = KeyFile(path);
        file.write_all(format!("{}\n", key.trim_end()).as_bytes())
            .map_err(GitError::io(&key_file.0))?;
        Ok(key_file)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        // Gone already is fine; anything else leaves a key on tmpfs until the
        // agent's next start clears the folder.
        if let Err(error) = std::fs::remove_file(&self.0)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, "Could not remove a git deploy key file.");
        }
    }
}

/// Why a git step failed; [`GitError::is_job_fault`] says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {operation} ({repo}): could not run git: {source}")]
    Spawn {
        operation: &'static str,
        repo: String,
        source: std::io::Error,
    },
    #[error(
        "git {operation} ({repo}): still running after {secs} s (git.fetch_timeout_secs); stopped"
    )]
    TimedOut {
        operation: &'static str,
        repo: String,
        secs: u64,
    },
    #[error("git {operation} ({repo}): the remote did not answer: {stderr}")]
    Unreachable {
        operation: &'static str,
        repo: String,
        stderr: String,
    },
    #[error("git {operation} ({repo}): the remote refused the agent's credentials: {stderr}")]
    Auth {
        operation: &'static str,
        repo: String,
        stderr: String,
    },
    #[error(
        "git {operation} ({repo}): the remote's host key is not the one git.known_hosts (or this agent's first fetch) holds: {stderr}"
    )]
    HostKey {
        operation: &'static str,
        repo: String,
        stderr: String,
    },
    #[error("source {repo}: no such repository on the remote: {stderr}")]
    NoRepository { repo: String, stderr: String },
    #[error("source {repo}: the remote has no commit {sha}")]
    MissingCommit { repo: String, sha: String },
    #[error("source {repo}: the remote has no branch or tag {name:?}")]
    MissingRef { repo: String, name: String },
    #[error("git {operation} ({repo}): {stderr}")]
    Failed {
        operation: &'static str,
        repo: String,
        stderr: String,
    },
    #[error("git mirror of {repo}: waited {secs} s for another job's fetch of it")]
    Busy { repo: String, secs: u64 },
    #[error("git mirror {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl GitError {
    /// What the job named that no host could get past: a repository, commit or
    /// ref the remote does not have. Everything else is the host's, retried.
    pub fn is_job_fault(&self) -> bool {
        matches!(
            self,
            GitError::NoRepository { .. }
                | GitError::MissingCommit { .. }
                | GitError::MissingRef { .. }
        )
    }

    pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GitError + '_ {
        move |source| GitError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// A git process to run: in `dir`, for `repo` (named in its errors).
pub struct Git<'a> {
    command: Command,
    operation: &'static str,
    repo: &'a str,
    timeout: Duration,
    hide: Vec<String>,
    /// What its stdin reads (`update-ref --stdin`); otherwise nothing.
    input: Option<String>,
    /// An SSH key file that must outlive the process.
    _key: Option<KeyFile>,
}

/// Where git finds its helpers (`git-remote-https`, `ssh`) and nothing else.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl<'a> Git<'a> {
    /// `git -C dir ARGS` with the agent's hardening; `home` is an empty folder
    /// of the agent's (git wants one; no config is read from it).
    pub fn new(dir: &Path, home: &Path, repo: &'a str, operation: &'static str) -> Git<'a> {
        let mut command = Command::new("git");
        command
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", home)
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            // No prompt: a remote that asks for a password the agent lacks fails.
            .env("GIT_ASKPASS", "/bin/false")
            .env("SSH_ASKPASS", "/bin/false")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .arg("-C")
            .arg(dir);
        for setting in [
            "core.hooksPath=/dev/null",
            "core.fsmonitor=false",
            "protocol.file.allow=never",
            "protocol.ext.allow=never",
            "submodule.recurse=false",
            "fetch.recurseSubmodules=false",
            "fetch.fsckObjects=true",
            "gc.auto=0",
            "advice.detachedHead=false",
        ] {
            command.arg("-c").arg(setting);
        }
        // Its own process group: a stop kills its helpers (`git-remote-https`,
        // `ssh`, `index-pack`) with it, not only git.
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        Git {
            command,
            operation,
            repo,
            timeout: Duration::from_secs(600),
            hide: Vec::new(),
            input: None,
            _key: None,
        }
    }

    /// Lets this one process read the agent's own mirror through `file://`.
    pub fn allow_file(mut self) -> Self {
        self.command.arg("-c").arg("protocol.file.allow=always");
        self
    }

    /// Feeds `input` to its stdin.
    pub fn stdin(mut self, input: String) -> Self {
        self.command.stdin(Stdio::piped());
        self.input = Some(input);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn arg_path(mut self, path: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.arg(path);
        self
    }

    pub fn arg_str(self, arg: &str) -> Self {
        self.arg_path(arg)
    }

    /// Authenticates this process's fetch with `credential`: an HTTP header in
    /// its environment's config (`GIT_CONFIG_COUNT`), or an SSH key in a 0600
    /// file under `scratch` (a tmpfs of the agent's), removed when it ends. An
    /// SSH remote's host key must be in `known_hosts` when given; else the
    /// first key seen is trusted and kept in `scratch/known_hosts`.
    pub fn credential(
        mut self,
        credential: Option<&Credential>,
        scratch: &Path,
        known_hosts: Option<&Path>,
    ) -> Result<Self, GitError> {
        let Some(credential) = credential else {
            return Ok(self);
        };
        self.hide = credential.forms();
        match credential {
            Credential::Token { user, token } => {
                let header = format!("Authorization: Basic {}", Credential::basic(user, token));
                self.command
                    .env("GIT_CONFIG_COUNT", "1")
                    .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                    .env("GIT_CONFIG_VALUE_0", header);
            }
            Credential::SshKey(key) => {
                let file = KeyFile::write(scratch, key)?;
                let trust = match known_hosts {
                    Some(file) => format!(
                        "-o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                        file.display()
                    ),
                    None => format!(
                        "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}",
                        scratch.join("known_hosts").display()
                    ),
                };
                // No user or system ssh config either: only these options.
                self.command.env(
                    "GIT_SSH_COMMAND",
                    format!(
                        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes -o GlobalKnownHostsFile=/dev/null {trust}",
                        file.path().display(),
                    ),
                );
                self._key = Some(file);
            }
        }
        Ok(self)
    }

    /// Runs it to its end or its timeout; its stdout, or the error its stderr
    /// tells.
    pub async fn run(mut self) -> Result<String, GitError> {
        let (operation, repo) = (self.operation, self.repo.to_owned());
        let mut child = self.command.spawn().map_err(|source| GitError::Spawn {
            operation,
            repo: repo.clone(),
            source,
        })?;
        // Written beside the wait, so a git that talks back cannot block on a
        // full pipe; one that stops reading ends the write with EPIPE, and its
        // exit says why. The pipe closes when written: its end of input.
        let input = self.input.take().zip(child.stdin.take());
        let feed = async move {
            if let Some((input, mut pipe)) = input {
                use tokio::io::AsyncWriteExt;
                let _ = pipe.write_all(input.as_bytes()).await;
            }
        };
        // Dropped at the timeout (or with this future): the group is killed.
        let mut group = Group(child.id());
        let ran = async move { tokio::join!(feed, child.wait_with_output()).1 };
        let waited = tokio::time::timeout(self.timeout, ran).await;
        if let Ok(Ok(_)) = &waited {
            // Reaped: its id may be reused, and nothing of it is left to kill.
            group.0 = None;
        }
        let output = waited
            .map_err(|_| GitError::TimedOut {
                operation,
                repo: repo.clone(),
                secs: self.timeout.as_secs(),
            })?
            .map_err(|source| GitError::Spawn {
                operation,
                repo: repo.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        for form in self.hide.iter().filter(|f| f.len() >= 4) {
            stderr = stderr.replace(form.as_str(), crate::mask::MASK);
        }
        let stderr = crate::rules::bounded_text(&stderr, 600);
        Err(classify(operation, repo, stderr))
    }
}

/// A git's process group, killed when dropped unless it ended on its own.
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // Already gone (git ended, its helpers with it) is fine.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The cause a failed git's stderr names.
fn classify(operation: &'static str, repo: String, stderr: String) -> GitError {
    let said = |needles: &[&str]| needles.iter().any(|n| stderr.contains(n));
    if said(&[
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
    ]) {
        return GitError::HostKey {
            operation,
            repo,
            stderr,
        };
    }
    if said(&[
        "Authentication failed",
        "returned error: 401",
        "returned error: 403",
        "Permission denied (publickey",
        "could not read Username",
        "could not read Password",
    ]) {
        GitError::Auth {
            operation,
            repo,
            stderr,
        }
    } else if said(&[
        "Repository not found",
        "returned error: 404",
        "does not appear to be a git repository",
        "repository not exported",
        "No such repository",
        "not found",
    ]) && !said(&["Could not resolve host"])
    {
        GitError::NoRepository { repo, stderr }
    } else if said(&[
        "Could not resolve host",
        "Connection refused",
        "Failed to connect",
        "unable to connect",
        "Connection timed out",
        "Connection reset",
        "early EOF",
        "returned error: 5",
        "the remote end hung up",
    ]) {
        GitError::Unreachable {
            operation,
            repo,
            stderr,
        }
    } else {
        GitError::Failed {
            operation,
            repo,
            stderr,
        }
    }
}
