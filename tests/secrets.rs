//! The pool's sealed secrets, against moto (S3, KMS) and the real Docker engine: a
//! job and its services get exactly the secrets they name and no log shows them;
//! a bad bundle stops the agent with exit 78 and one line.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine;
use common::boot::boot_failure;
use common::scenario::Scenario;
use common::sealed::*;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn jobs_get_exactly_their_secrets_and_logs_never_show_them() {
    let Some(s) = Scenario::new("secrets").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let SecretAgent {
        shm,
        config,
        agent,
        _bundle,
    } = SecretAgent::start(&s, "i-secrets").await;

    let id = unique("uses-secrets");
    let script = r#"
        ls -ln /run/secrets | awk 'NR > 1 { print $1, $3, $9 }'
        env | grep -q '^NPM_TOKEN=' && echo env-npm-token
        env | grep -q DEPLOY_KEY || echo no-env-deploy-key
        env | grep -q DB_PASS || echo no-env-db-pass
        echo "plain: $(cat /run/secrets/npm-token)"
        echo "base64: $(cat /run/secrets/npm-token | base64)"
        echo "env: $NPM_TOKEN"
        printf 'split: npm_S3cr3t'; sleep 0.3; printf 'V4lue_0123456789\n'
        cat /run/secrets/deploy-key
        echo "unlisted: $(cat /run/secrets/db-pass 2>&1 | head -c 0)done"
    "#;
    let mut spec = job(&id, &stack.image, &["sh", "-c", script]);
    spec["profile"] = json!("deploy");
    spec["secrets"] = json!(["npm-token", "deploy-key"]);
    aws.send_job(&pool.queue_url, &spec).await;

    let refused = unique("greedy");
    let mut greedy = job(&refused, &stack.image, &["true"]);
    greedy["profile"] = json!("deploy");
    greedy["secrets"] = json!(["db-pass"]);
    aws.send_job(&pool.queue_url, &greedy).await;

    let result = aws.wait_json(&pool.bucket, &keys::result(&id)).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let rejected = aws.wait_json(&pool.bucket, &keys::result(&refused)).await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(
        rejected["reason"],
        "secrets.db-pass: not allowed by profile \"deploy\""
    );

    let log = String::from_utf8(aws.object(&pool.bucket, &keys::log(&id)).await.unwrap()).unwrap();
    assert_the_log_is_masked(&log);
    assert_no_secret("result.json", &result.to_string());
    let stdout = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(
        stdout.contains("split: ***"),
        "the agent's stdout carries the masked line"
    );
    assert_no_secret("the agent's stdout", &stdout);

    // Nothing secret under the work dir; the job's secret directory is gone.
    for entry in walk(config.dir.path()) {
        if let Ok(text) = std::fs::read_to_string(&entry) {
            assert_no_secret(&entry.display().to_string(), &text);
        }
    }
    eventually("the job's secret directory to be removed", LONG, || async {
        std::fs::read_dir(&shm).unwrap().next().is_none()
    })
    .await;
    drop(agent);
    std::fs::remove_dir_all(&shm).unwrap();
}

/// What the job printed, each secret in every form it took masked: its files'
/// modes first, then the plain, base64, env, split and multi-line forms.
fn assert_the_log_is_masked(log: &str) {
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        &lines[..7],
        [
            "-r-------- 0 deploy-key",
            "-r-------- 0 npm-token",
            "env-npm-token",
            "no-env-deploy-key",
            "no-env-db-pass",
            "plain: ***",
            "base64: ***",
        ],
        "{log}"
    );
    assert!(log.contains("env: ***\n"), "{log}");
    assert!(log.contains("split: ***\n"), "{log}");
    // Every line of a multi-line secret is masked, its armour too.
    assert!(
        log.contains("split: ***\n***\n***\n***\nunlisted: done\n"),
        "{log}"
    );
    assert_no_secret("log.txt", log);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Boots an agent on `config` that must stop with exit 78 (the config's fault);
/// the one line it leaves.
async fn exit_78(s: &Scenario, what: &str, config: &str) -> String {
    let (code, line) = boot_failure(&s.stack, &s.aws, &s.pool, config).await;
    assert_eq!(code, Some(78), "{what}: {line}");
    line
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bundles_stop_the_agent_with_exit_78_and_one_line() {
    let Some(s) = Scenario::new("badseal").await else {
        return;
    };
    let Scenario { aws, pool, .. } = &s;
    let dir = tempfile::tempdir().unwrap();
    let sealed = seal(aws, pool, dir.path()).await;
    let shm = secrets_dir();

    let line = exit_78(
        &s,
        "wrong context",
        &secrets_config(&sealed, &shm, "some-other-pool"),
    )
    .await;
    assert!(
        line.contains("KMS refused the bundle's data key (InvalidCiphertextException)"),
        "{line}"
    );

    let missing = Sealed {
        key: "secrets/nothing-here.json".into(),
        ..seal(aws, pool, dir.path()).await
    };
    let config = secrets_config(&missing, &shm, &missing.pool_name);
    let line = exit_78(&s, "missing object", &config).await;
    assert!(
        line.contains("fetch the secret bundle") && line.contains("NoSuchKey"),
        "{line}"
    );

    // One byte of the ciphertext changed.
    let tampered = seal(aws, pool, dir.path()).await;
    let mut bundle: serde_json::Value = aws.json(&tampered.bucket, &tampered.key).await.unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ciphertext = b64.decode(bundle["ciphertext"].as_str().unwrap()).unwrap();
    ciphertext[3] ^= 0x01;
    bundle["ciphertext"] = json!(b64.encode(ciphertext));
    aws.put(
        &tampered.bucket,
        &tampered.key,
        bundle.to_string().into_bytes(),
    )
    .await;
    let config = secrets_config(&tampered, &shm, &tampered.pool_name);
    let line = exit_78(&s, "tampered", &config).await;
    assert!(line.contains("fails its integrity check"), "{line}");

    // The pool may only decrypt with its own key; this bundle was sealed with
    // another one, so KMS denies it.
    let denied = seal(aws, pool, dir.path()).await;
    let other_key = new_kms_key(aws).await;
    // (kms_key_id belongs to [secrets], which the profile section follows.)
    let config = secrets_config(&denied, &shm, &denied.pool_name).replace(
        "[profiles.deploy]",
        &format!("kms_key_id = \"{other_key}\"\n[profiles.deploy]"),
    );
    let line = exit_78(&s, "denied", &config).await;
    assert!(
        line.contains("KMS refused the bundle's data key (AccessDeniedException)"),
        "{line}"
    );

    // Secrets on a disk are refused before any job could write them there.
    // Under target/: on the disk whatever TMPDIR says.
    let on_disk = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("not-tmpfs"));
    let config = secrets_config(&sealed, &on_disk, &sealed.pool_name);
    let line = exit_78(&s, "not on tmpfs", &config).await;
    assert!(line.contains("not on tmpfs"), "{line}");
    std::fs::remove_dir_all(&shm).unwrap();
}

/// A service gets only the secrets it names, and only from its job's own; its
/// output is masked like the job's, and its secret directory goes with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_gets_only_the_secrets_it_names_from_its_job() {
    let Some(s) = Scenario::new("service-secrets").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let SecretAgent {
        shm,
        config: _config,
        agent,
        _bundle,
    } = SecretAgent::start(&s, "i-service-secrets").await;

    let id = unique("service-secrets");
    let mut spec = job(&id, &stack.image, &["sh", "-c", "sleep 1; echo job done"]);
    spec["profile"] = json!("deploy");
    spec["secrets"] = json!(["npm-token", "deploy-key"]);
    spec["services"] = json!([{
        "name": "registry",
        "image": stack.image,
        "command": ["sh", "-c", "ls /run/secrets; echo \"plain: $(cat /run/secrets/npm-token)\"; echo \"env: $NPM_TOKEN\"; sleep 30"],
        "secrets": ["npm-token"]
    }]);
    aws.send_job(&pool.queue_url, &spec).await;

    let greedy = unique("greedy-service");
    let mut refused = job(&greedy, &stack.image, &["true"]);
    refused["profile"] = json!("deploy");
    refused["secrets"] = json!(["npm-token"]);
    refused["services"] = json!([{"name": "db", "image": stack.image, "secrets": ["deploy-key"]}]);
    aws.send_job(&pool.queue_url, &refused).await;

    let result = aws.wait_json(&pool.bucket, &keys::result(&id)).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    let rejected = aws.wait_json(&pool.bucket, &keys::result(&greedy)).await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(
        rejected["reason"],
        "services[0].secrets.deploy-key: not one of the job's secrets: a service gets only secrets its job names"
    );
    let log = String::from_utf8(aws.object(&pool.bucket, &keys::log(&id)).await.unwrap()).unwrap();
    for line in [
        "[registry] npm-token",
        "[registry] plain: ***",
        "[registry] env: ***",
        "job done",
    ] {
        assert!(log.lines().any(|l| l == line), "{line:?} in {log}");
    }
    assert!(
        !log.contains("deploy-key"),
        "the service sees only its own: {log}"
    );
    assert_no_secret("log.txt", &log);
    eventually("every secret directory to be removed", LONG, || async {
        std::fs::read_dir(&shm).unwrap().next().is_none()
    })
    .await;
    drop(agent);
    std::fs::remove_dir_all(&shm).unwrap();
    assert_clean(&id);
}
