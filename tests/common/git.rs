//! The stack's git servers (`git daemon`, lighttpd's git http-backend behind
//! basic auth, and sshd letting in one deploy key, all serving `STACK_GIT_ROOT`)
//! and test repositories on them, each uniquely named and removed with its value.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::unique;

/// The stack's git servers, from `scripts/stack env`.
pub struct GitServer {
    pub root: PathBuf,
    /// `git://127.0.0.1:9418`
    pub daemon: String,
    /// `http://127.0.0.1:9080/git`
    pub http: String,
    pub user: String,
    pub password: String,
}

impl GitServer {
    pub fn from_env() -> GitServer {
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("{name} is not set: eval \"$(scripts/stack env)\""))
        };
        GitServer {
            root: PathBuf::from(var("STACK_GIT_ROOT")),
            daemon: var("STACK_GIT_DAEMON"),
            http: var("STACK_GIT_HTTP"),
            user: var("STACK_GIT_USER"),
            password: var("STACK_GIT_PASSWORD"),
        }
    }

    /// A profile's `git_remotes` allowing both servers.
    pub fn remotes(&self) -> String {
        format!("[\"{}/\", \"{}/\"]", self.daemon, self.http)
    }
}

/// The stack's SSH remote: `ssh://deckhand-git@127.0.0.1:9422<STACK_GIT_ROOT>`,
/// the deploy key it lets in, one it does not, and its host key as a
/// `known_hosts` file.
pub struct SshRemote {
    pub url: String,
    pub key: PathBuf,
    pub wrong_key: PathBuf,
    pub known_hosts: PathBuf,
}

impl SshRemote {
    pub fn from_env() -> SshRemote {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: scripts/stack up, then eval \"$(scripts/stack env)\"")
            })
        };
        SshRemote {
            url: var("STACK_GIT_SSH"),
            key: PathBuf::from(var("STACK_GIT_SSH_KEY")),
            wrong_key: PathBuf::from(var("STACK_GIT_SSH_WRONG_KEY")),
            known_hosts: PathBuf::from(var("STACK_GIT_SSH_KNOWN_HOSTS")),
        }
    }

    /// `repo`'s URL over SSH.
    pub fn url_of(&self, repo: &TestRepo) -> String {
        format!("{}/{}", self.url, repo.name)
    }
}

/// A bare repository on the servers, and a work tree the test commits in.
pub struct TestRepo {
    pub name: String,
    pub bare: PathBuf,
    work: tempfile::TempDir,
    daemon: String,
    http: String,
}

/// `git ARGS` in `dir`, with a fixed identity and no user config; its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=deckhand test",
            "-c",
            "user.email=test@deckhand.invalid",
        ])
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl TestRepo {
    pub fn new(server: &GitServer, prefix: &str) -> TestRepo {
        let name = format!("{}.git", unique(prefix));
        let bare = server.root.join(&name);
        git(&server.root, &["init", "--quiet", "--bare", &name]);
        let work = tempfile::tempdir().unwrap();
        git(work.path(), &["init", "--quiet", "."]);
        TestRepo {
            name,
            bare,
            work,
            daemon: server.daemon.clone(),
            http: server.http.clone(),
        }
    }

    pub fn daemon_url(&self) -> String {
        format!("{}/{}", self.daemon, self.name)
    }

    pub fn http_url(&self) -> String {
        format!("{}/{}", self.http, self.name)
    }

    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// Writes `files`, commits them all and pushes `main`; the commit's id.
    pub fn commit(&self, files: &[(&str, &[u8])], message: &str) -> String {
        for (path, body) in files {
            let path = self.work().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        git(self.work(), &["add", "-A"]);
        git(
            self.work(),
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        self.push();
        git(self.work(), &["rev-parse", "HEAD"])
    }

    pub fn push(&self) {
        let bare = self.bare.to_str().unwrap();
        git(
            self.work(),
            &["push", "--quiet", "--force", bare, "HEAD:refs/heads/main"],
        );
    }

    /// `git bundle create --all` of what was pushed.
    pub fn bundle(&self) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.bundle");
        git(
            &self.bare,
            &["bundle", "create", file.to_str().unwrap(), "--all"],
        );
        std::fs::read(file).unwrap()
    }
}

impl Drop for TestRepo {
    fn drop(&mut self) {
        // Gone already when the test removed it on purpose.
        let _ = std::fs::remove_dir_all(&self.bare);
    }
}

/// Two profiles on the stack's SSH remote, `default` with its deploy key and
/// `wrong` with a key it does not know, both in a sealed bundle; host keys from
/// the stack's `known_hosts`. The agent's config.
pub async fn ssh_config(
    s: &super::scenario::Scenario,
    ssh: &SshRemote,
    shm: &std::path::Path,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&ssh.key, dir.path().join("git.pem")).unwrap();
    std::fs::copy(&ssh.wrong_key, dir.path().join("wrong.pem")).unwrap();
    let extra = "git-key = { file = \"git.pem\" }\nwrong-key = { file = \"wrong.pem\" }";
    let sealed = super::sealed::seal_with(&s.aws, &s.pool, dir.path(), extra).await;
    // The remote is a prefix of the stack's repositories: `ssh://…/repos/`.
    let remote = format!("{}/", ssh.url);
    format!(
        "[agent]\nsecrets_dir = \"{}\"\nslots = 2\n[secrets]\nbucket = \"{}\"\nkey = \"{}\"\ncontext = {{ pool = \"{}\" }}\n[git]\nknown_hosts = \"{}\"\n[profiles.default]\ngit_remotes = [\"{remote}\"]\ngit_credentials = {{ \"{remote}\" = \"git-key\" }}\n[profiles.wrong]\ngit_remotes = [\"{remote}\"]\ngit_credentials = {{ \"{remote}\" = \"wrong-key\" }}",
        shm.display(),
        sealed.bucket,
        sealed.key,
        sealed.pool_name,
        ssh.known_hosts.display(),
    )
}

/// A job's shell that prints `in-env` or `in-files` if any of `needles` is in
/// its environment, its workspace or its secret files.
pub fn look_for(needles: &[&str]) -> String {
    let quoted: Vec<String> = needles.iter().map(|l| format!("'{l}'")).collect();
    format!(
        "for f in {}; do env | grep -qF \"$f\" && echo in-env; grep -rqF \"$f\" . /run/secrets 2>/dev/null && echo in-files; done; true",
        quoted.join(" ")
    )
}
