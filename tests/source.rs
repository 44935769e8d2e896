//! A job's git `source` against the stack's git servers (git daemon, and git
//! http-backend behind basic auth), moto and the real Docker engine: a job gets
//! the named commit, a ref resolves, a second job hits the mirror, a seeded host
//! serves its first job with no clone, a remote outside `git_remotes` is
//! rejected, a missing commit fails once and a remote that is down is an
//! `error`; the token reaches no job; an `ssh://` remote is fetched with the
//! profile's deploy key, which reaches no job, and a wrong key is an `error`; a
//! hostile repository is contained.

mod common;

use common::git::{GitServer, SshRemote, TestRepo, git, look_for, ssh_config};
use common::scenario::Scenario;
use common::sealed::{seal_with, secrets_dir};
use common::*;
use serde_json::{Value, json};

const SHOW: &str = "cat VERSION; test -e .git/objects/info/alternates && echo alternates || echo self-contained; grep url .git/config";

fn source_job(image: &str, id: &str, command: &str, source: Value) -> Value {
    let mut body = job(id, image, &["sh", "-c", command]);
    body["source"] = source;
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_gets_its_commit_a_ref_resolves_and_the_next_job_hits_the_mirror() {
    let Some(s) = Scenario::new("source").await else {
        return;
    };
    let server = GitServer::from_env();
    let repo = TestRepo::new(&server, "app");
    let first = repo.commit(&[("VERSION", b"one\n")], "one");
    let second = repo.commit(&[("VERSION", b"two\n")], "two");
    let profile = format!("[profiles.default]\ngit_remotes = {}", server.remotes());
    let (_config, agent) = s.agent("i-source", &profile);
    let url = repo.daemon_url();

    let id = unique("by-sha");
    s.send_job(&source_job(
        &s.stack.image,
        &id,
        SHOW,
        json!({"repo": url, "sha": first}),
    ))
    .await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["source"]["sha"], first.as_str());
    assert_eq!(result["source"]["mirror"], "cold");
    assert!(result["source"]["ref"].is_null(), "{result}");
    let log = s.log(&id).await.unwrap();
    assert_eq!(log, format!("one\nself-contained\n\turl = {url}\n"));

    let id = unique("by-ref");
    s.send_job(&source_job(
        &s.stack.image,
        &id,
        SHOW,
        json!({"repo": url, "ref": "main"}),
    ))
    .await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["source"]["sha"], second.as_str());
    assert_eq!(result["source"]["ref"], "refs/heads/main");
    assert_eq!(result["source"]["mirror"], "hit");
    assert!(s.log(&id).await.unwrap().starts_with("two\n"));

    let third = repo.commit(&[("VERSION", b"three\n")], "three");
    let id = unique("new-commit");
    s.send_job(&source_job(
        &s.stack.image,
        &id,
        "cat VERSION",
        json!({"repo": url, "ref": "main", "depth": 1}),
    ))
    .await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["source"]["sha"], third.as_str());
    assert_eq!(result["source"]["mirror"], "hit");
    assert_eq!(s.log(&id).await.as_deref(), Some("three\n"));
    // A sha the mirror has is no fetch at all.
    let id = unique("again");
    s.send_job(&source_job(
        &s.stack.image,
        &id,
        "cat VERSION",
        json!({"repo": url, "sha": first}),
    ))
    .await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["source"]["fetch_ms"], 0, "{result}");
    assert_eq!(agent.count("Mirror fetched."), 3, "cold, ref, new commit");
    s.wait_empty().await;
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seeded_host_serves_its_first_job_with_no_clone() {
    let Some(s) = Scenario::new("source-seed").await else {
        return;
    };
    let server = GitServer::from_env();
    let repo = TestRepo::new(&server, "seeded");
    let sha = repo.commit(&[("VERSION", b"seeded\n")], "seeded");
    let key = format!("seeds/{}.bundle", unique("app"));
    s.aws.put(&s.pool.bucket, &key, repo.bundle()).await;
    // The server no longer has it: only the seed can serve the job.
    std::fs::remove_dir_all(&repo.bare).unwrap();
    let url = repo.daemon_url();
    let config = format!(
        "[git]\nseed = [{{ repo = \"{url}\", bundle = \"s3://{}/{key}\" }}]\n[profiles.default]\ngit_remotes = {}",
        s.pool.bucket,
        server.remotes()
    );
    let (_config, agent) = s.agent("i-source-seed", &config);
    let id = unique("seeded");
    s.send_job(&source_job(
        &s.stack.image,
        &id,
        "cat VERSION",
        json!({"repo": url, "sha": sha}),
    ))
    .await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["source"]["mirror"], "seeded");
    assert_eq!(result["source"]["fetch_ms"], 0);
    assert_eq!(s.log(&id).await.as_deref(), Some("seeded\n"));
    assert_eq!(agent.count("Mirror seeded."), 1);
    assert_eq!(agent.count("Mirror fetched."), 0);
    s.wait_empty().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_commit_fails_once_and_a_down_remote_is_an_error_retried() {
    let Some(s) = Scenario::new("source-fates").await else {
        return;
    };
    let server = GitServer::from_env();
    let repo = TestRepo::new(&server, "fates");
    repo.commit(&[("VERSION", b"x\n")], "x");
    // Port 1 on loopback: nothing listens there.
    let profile = format!(
        "[agent]\nslots = 2\n[profiles.default]\ngit_remotes = [\"{}/\", \"git://127.0.0.1:1/\"]",
        server.daemon
    );
    let (_config, agent) = s.agent("i-source-fates", &profile);
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let id = unique("missing");
    s.send_job(&source_job(
        &s.stack.image,
        &id,
        "echo ran",
        json!({"repo": repo.daemon_url(), "sha": missing}),
    ))
    .await;
    let down = unique("down");
    let body = source_job(
        &s.stack.image,
        &down,
        "echo ran",
        json!({"repo": "git://127.0.0.1:1/app.git", "ref": "main"}),
    );
    s.send_job(&body).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "failed", "{result}");
    assert!(
        result["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("the remote has no commit {missing}")),
        "{result}"
    );
    let first = eventually("the down remote's first attempt", LONG, || {
        s.attempt(&down, 1)
    })
    .await;
    assert_eq!(first["status"], "error", "{first}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("the remote did not answer"),
        "{first}"
    );
    // The remote that was down is tried again; the missing commit is not.
    eventually("the down remote's second attempt", LONG, || {
        s.attempt(&down, 2)
    })
    .await;
    assert!(
        s.attempt(&id, 2).await.is_none(),
        "a missing commit runs once"
    );
    assert_eq!(agent.count("ran"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_outside_the_profile_or_a_bad_ref_is_rejected_naming_the_field() {
    let Some(s) = Scenario::new("source-rules").await else {
        return;
    };
    let server = GitServer::from_env();
    let profile = format!("[profiles.default]\ngit_remotes = {}", server.remotes());
    let config = s.config("i-source-rules", &profile);
    let mut body = source_job(
        &s.stack.image,
        &unique("elsewhere"),
        "true",
        json!({"repo": "https://git.elsewhere.example/app.git", "sha": "abc"}),
    );
    let run = exec(&config, &body);
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    let reason = run.result["reason"].as_str().unwrap();
    assert!(
        reason
            .contains("source.repo: does not start with one of profile \"default\"'s git_remotes"),
        "{reason}"
    );
    assert!(
        reason.contains("source.sha: must be a commit id, 40 hex digits"),
        "{reason}"
    );
    let url = format!("{}/app.git", server.daemon);
    body["source"] = json!({"repo": url, "ref": "a..b"});
    let run = exec(&config, &body);
    assert!(
        run.result["reason"]
            .as_str()
            .unwrap()
            .contains("source.ref: not a branch or tag name"),
        "{}",
        run.result
    );
    // By hand too: `deckhand exec` checks out through the host's mirrors.
    let repo = TestRepo::new(&server, "by-hand");
    repo.commit(&[("VERSION", b"by hand\n")], "by hand");
    body["source"] = json!({"repo": repo.daemon_url(), "ref": "main"});
    body["command"] = json!(["cat", "VERSION"]);
    let run = exec(&config, &body);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.output("stdout"), ["by hand"]);
    assert_eq!(run.result["source"]["mirror"], "cold");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_reaches_no_job_workspace_or_log() {
    let Some(s) = Scenario::new("source-token").await else {
        return;
    };
    let server = GitServer::from_env();
    let repo = TestRepo::new(&server, "private");
    let sha = repo.commit(&[("VERSION", b"private\n")], "private");
    let credential = format!("{}:{}", server.user, server.password);
    let dir = tempfile::tempdir().unwrap();
    let sealed = seal_with(
        &s.aws,
        &s.pool,
        dir.path(),
        &format!("git-token = \"{credential}\""),
    )
    .await;
    let shm = secrets_dir();
    let config = format!(
        "[agent]\nsecrets_dir = \"{}\"\n[secrets]\nbucket = \"{}\"\nkey = \"{}\"\ncontext = {{ pool = \"{}\" }}\n[profiles.default]\ngit_remotes = {}\ngit_credentials = {{ \"{}/\" = \"git-token\" }}",
        shm.display(),
        sealed.bucket,
        sealed.key,
        sealed.pool_name,
        server.remotes(),
        server.http
    );
    let (_config, agent) = s.agent("i-source-token", &config);
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(&credential);
    let forms = [server.password.clone(), basic.clone()];
    let look = format!(
        "cat VERSION; for f in {} {}; do env | grep -qF \"$f\" && echo in-env; grep -rqF \"$f\" . && echo in-workspace; done; echo looked",
        forms[0], forms[1]
    );
    let id = unique("private");
    s.send_job(&source_job(
        &s.stack.image,
        &id,
        &look,
        json!({"repo": repo.http_url(), "sha": sha}),
    ))
    .await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(s.log(&id).await.as_deref(), Some("private\nlooked\n"));
    s.wait_empty().await;
    let logged = std::fs::read_to_string(agent.log_path()).unwrap();
    for form in &forms {
        assert!(
            !logged.contains(form.as_str()),
            "the agent's log has {form}"
        );
        assert!(!result.to_string().contains(form.as_str()));
    }
    let _ = std::fs::remove_dir_all(&shm);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_remote_is_fetched_with_the_deploy_key_which_reaches_no_job() {
    let Some(s) = Scenario::new("source-ssh").await else {
        return;
    };
    let (server, ssh) = (GitServer::from_env(), SshRemote::from_env());
    let repo = TestRepo::new(&server, "ssh");
    let sha = repo.commit(&[("VERSION", b"over ssh\n")], "ssh");
    let other = TestRepo::new(&server, "ssh-wrong");
    let other_sha = other.commit(&[("VERSION", b"never\n")], "never");
    let shm = secrets_dir();
    let config = ssh_config(&s, &ssh, &shm).await;
    let (_config, agent) = s.agent("i-source-ssh", &config);
    // A line from the middle of each key: no form of it may reach the job.
    let key_text = std::fs::read_to_string(&ssh.key).unwrap();
    let lines: Vec<&str> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let look = format!(
        "cat VERSION; {}; grep url .git/config; echo looked",
        look_for(&lines)
    );
    let id = unique("ssh");
    s.send_job(&source_job(
        &s.stack.image,
        &id,
        &look,
        json!({"repo": ssh.url_of(&repo), "sha": sha}),
    ))
    .await;
    let wrong = unique("ssh-wrong");
    let mut body = source_job(
        &s.stack.image,
        &wrong,
        "echo ran",
        json!({"repo": ssh.url_of(&other), "sha": other_sha}),
    );
    body["profile"] = json!("wrong");
    s.send_job(&body).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["source"]["mirror"], "cold", "{result}");
    assert_eq!(
        s.log(&id).await.as_deref(),
        Some(format!("over ssh\n\turl = {}\nlooked\n", ssh.url_of(&repo)).as_str())
    );
    // A key the remote does not know: the host's fault (the pool's secret), retried.
    let first = eventually("the wrong key's first attempt", LONG, || {
        s.attempt(&wrong, 1)
    })
    .await;
    assert_eq!(first["status"], "error", "{first}");
    let reason = first["reason"].as_str().unwrap();
    assert!(
        reason.contains("the remote refused the agent's credentials"),
        "{first}"
    );
    assert_eq!(agent.count("ran"), 0);
    let logged = std::fs::read_to_string(agent.log_path()).unwrap();
    for line in &lines {
        assert!(
            !logged.contains(line),
            "the agent's log has a line of the key"
        );
        assert!(!result.to_string().contains(line) && !first.to_string().contains(line));
    }
    // Each key file lived only as long as its ssh.
    let left: Vec<_> = std::fs::read_dir(&shm)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("git-key-"))
        .collect();
    assert!(left.is_empty(), "deploy key files left: {left:?}");
    let _ = std::fs::remove_dir_all(&shm);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_remote_with_another_host_key_is_refused() {
    let Some(s) = Scenario::new("source-ssh-host").await else {
        return;
    };
    let (server, ssh) = (GitServer::from_env(), SshRemote::from_env());
    let repo = TestRepo::new(&server, "ssh-host");
    let sha = repo.commit(&[("VERSION", b"never\n")], "never");
    // Right deploy key, wrong host key: as if another host answered.
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    let (host, _) = ssh
        .url
        .trim_start_matches("ssh://")
        .split_once('/')
        .unwrap();
    let (_, host) = host.split_once('@').unwrap();
    let (name, port) = host.split_once(':').unwrap();
    let other = std::fs::read_to_string(ssh.wrong_key.with_extension("pub")).unwrap();
    std::fs::write(&known, format!("[{name}]:{port} {other}")).unwrap();
    let shm = secrets_dir();
    let config = ssh_config(&s, &ssh, &shm).await.replace(
        &ssh.known_hosts.display().to_string(),
        &known.display().to_string(),
    );
    let (_config, agent) = s.agent("i-source-ssh-host", &config);
    let id = unique("ssh-host");
    let body = json!({"repo": ssh.url_of(&repo), "sha": sha});
    s.send_job(&source_job(&s.stack.image, &id, "echo ran", body))
        .await;
    let first = eventually("the first attempt", LONG, || s.attempt(&id, 1)).await;
    assert_eq!(first["status"], "error", "{first}");
    let reason = first["reason"].as_str().unwrap();
    assert!(
        reason.contains("the remote's host key is not the one git.known_hosts"),
        "{first}"
    );
    assert_eq!(agent.count("ran"), 0);
    let _ = std::fs::remove_dir_all(&shm);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_repository_is_contained() {
    let Some(s) = Scenario::new("source-hostile").await else {
        return;
    };
    let server = GitServer::from_env();
    let marker = std::env::temp_dir().join(unique("hook-ran"));
    let (_repos, cases) = hostile_repos(&server, &marker);
    let profile = format!(
        "[agent]\nslots = 2\n[profiles.default]\nsource_max_mb = 2\ngit_remotes = {}",
        server.remotes()
    );
    let (_config, _agent) = s.agent("i-source-hostile", &profile);
    let mut ids = Vec::new();
    for (url, sha, submodules, _, _) in &cases {
        let id = unique("hostile");
        s.send_job(&source_job(
            &s.stack.image,
            &id,
            "cat VERSION",
            json!({"repo": url, "sha": sha, "submodules": submodules}),
        ))
        .await;
        ids.push(id);
    }
    for (id, (_, _, _, status, reason)) in ids.iter().zip(&cases) {
        let result = s.wait_result(id).await;
        assert_eq!(result["status"], *status, "{result}");
        assert!(
            result["reason"]
                .as_str()
                .unwrap_or_default()
                .contains(reason),
            "{result}"
        );
    }
    assert!(!marker.exists(), "a hook from the repository ran");
    s.wait_empty().await;
    assert_all_clean(&ids);
}

/// A repository with hook files, one with a blob past 2 MB, and one whose
/// submodule points outside the profile's remotes; each case's URL, commit,
/// whether it asks for submodules, and its status and reason.
#[allow(clippy::type_complexity)]
fn hostile_repos(
    server: &GitServer,
    marker: &std::path::Path,
) -> (
    Vec<TestRepo>,
    Vec<(String, String, bool, &'static str, &'static str)>,
) {
    let hook = format!("#!/bin/sh\ntouch {}\n", marker.display());
    let hooks = TestRepo::new(server, "hooks");
    let hooked = hooks.commit(
        &[
            ("hooks/post-checkout", hook.as_bytes()),
            (".githooks/post-checkout", hook.as_bytes()),
            ("VERSION", b"h\n"),
        ],
        "hooks",
    );
    let big = TestRepo::new(server, "big");
    let noise: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big_sha = big.commit(&[("blob.bin", &noise)], "big");
    let sub = TestRepo::new(server, "sub");
    let sub_sha = sub.commit(&[("lib.txt", b"lib\n")], "lib");
    let parent = TestRepo::new(server, "parent");
    let gitmodules =
        "[submodule \"lib\"]\n\tpath = lib\n\turl = https://git.elsewhere.example/lib.git\n";
    std::fs::write(parent.work().join(".gitmodules"), gitmodules).unwrap();
    // A gitlink with no folder behind it: `git add -A` would drop it.
    git(parent.work(), &["add", ".gitmodules"]);
    let gitlink = format!("160000,{sub_sha},lib");
    git(
        parent.work(),
        &["update-index", "--add", "--cacheinfo", &gitlink],
    );
    git(
        parent.work(),
        &["commit", "--quiet", "-m", "a submodule from elsewhere"],
    );
    parent.push();
    let parent_sha = git(parent.work(), &["rev-parse", "HEAD"]);
    let cases = [
        (hooks.daemon_url(), hooked, false, "succeeded", ""),
        (
            big.daemon_url(),
            big_sha,
            false,
            "failed",
            "over source_max_mb = 2",
        ),
        (
            parent.daemon_url(),
            parent_sha,
            true,
            "failed",
            "submodule \"lib\" has the URL \"https://git.elsewhere.example/lib.git\": not under the profile's git_remotes",
        ),
    ];
    let repos = vec![hooks, big, sub, parent];
    (repos, cases.to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submodule_under_the_remotes_is_checked_out_from_its_own_mirror() {
    let Some(s) = Scenario::new("source-sub").await else {
        return;
    };
    let server = GitServer::from_env();
    let lib = TestRepo::new(&server, "lib");
    let lib_sha = lib.commit(&[("lib.txt", b"from the submodule\n")], "lib");
    let app = TestRepo::new(&server, "app");
    // Relative, as most are: resolved against the app's URL.
    let gitmodules = format!(
        "[submodule \"lib\"]\n\tpath = vendor/lib\n\turl = ../{}\n",
        lib.name
    );
    std::fs::write(app.work().join(".gitmodules"), gitmodules).unwrap();
    std::fs::write(app.work().join("VERSION"), "app\n").unwrap();
    git(app.work(), &["add", ".gitmodules", "VERSION"]);
    let gitlink = format!("160000,{lib_sha},vendor/lib");
    git(
        app.work(),
        &["update-index", "--add", "--cacheinfo", &gitlink],
    );
    git(app.work(), &["commit", "--quiet", "-m", "with lib"]);
    app.push();
    let profile = format!("[profiles.default]\ngit_remotes = {}", server.remotes());
    let (_config, _agent) = s.agent("i-source-sub", &profile);
    let id = unique("with-sub");
    let show = "cat VERSION vendor/lib/lib.txt; test -e vendor/lib/.git && echo its-own-repo";
    let body = source_job(
        &s.stack.image,
        &id,
        show,
        json!({"repo": app.daemon_url(), "ref": "main", "submodules": true}),
    );
    s.send_job(&body).await;
    let result = s.wait_result(&id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(
        s.log(&id).await.as_deref(),
        Some("app\nfrom the submodule\nits-own-repo\n")
    );
    s.wait_empty().await;
    assert_clean(&id);
}
