//! Host bootstrap against moto (S3, KMS), the real Docker engine and the local
//! registries: sealed secrets, masking, registry credentials, warm images and the
//! cache volume.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use common::agent::{AgentProcess, agent_config};
use common::archives::{raw_tar, tar_gz};
use common::aws::{Aws, Pool};
use common::scenario::Scenario;
use common::*;
use serde_json::json;

const NPM_TOKEN: &str = "npm_S3cr3tV4lue_0123456789";
const DEPLOY_KEY: &str =
    "-----BEGIN KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldY\n-----END KEY-----\n";
const DB_PASS: &str = "db-pass-NOT-for-this-job";
const REGISTRY_CRED: &str = "deckhand:stack-registry-secret";

/// A KMS key, a sealed bundle in S3 (through `deckhand seal`) and its context.
struct Sealed {
    bucket: String,
    key: String,
    pool_name: String,
}

async fn kms(aws: &Aws) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(
        &aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&aws.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await,
    )
}

/// Seals the test secrets into a bundle of its own (a unique key) under a new KMS key.
async fn seal(aws: &Aws, pool: &Pool, dir: &Path) -> Sealed {
    let key_id = kms(aws)
        .await
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    std::fs::write(dir.join("deploy.pem"), DEPLOY_KEY).unwrap();
    let input = dir.join("secrets.toml");
    std::fs::write(
        &input,
        format!(
            "npm-token = \"{NPM_TOKEN}\"\ndeploy-key = {{ file = \"deploy.pem\" }}\ndb-pass = \"{DB_PASS}\"\nregistry-cred = \"{REGISTRY_CRED}\"\n"
        ),
    )
    .unwrap();
    let config = dir.join("seal.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            aws.endpoint
        ),
    )
    .unwrap();
    let pool_name = unique("pool");
    let key = format!("secrets/{}.json", unique("bundle"));
    let out = format!("s3://{}/{key}", pool.bucket);
    let output = deckhand()
        .args(["--config", path_str(&config), "seal", "--kms-key", &key_id])
        .args([
            "--context",
            &format!("pool={pool_name}"),
            "--in",
            path_str(&input),
            "--out",
            &out,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "seal: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Sealed {
        bucket: pool.bucket.clone(),
        key,
        pool_name,
    }
}

/// A tmpfs directory of the test's own for job secret files.
fn secrets_dir() -> PathBuf {
    let dir = PathBuf::from("/dev/shm").join(unique("deckhand-secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn secrets_config(sealed: &Sealed, secrets_dir: &Path, context_pool: &str) -> String {
    format!(
        r#"
[agent]
secrets_dir = "{dir}"
[secrets]
bucket = "{bucket}"
key = "{key}"
context = {{ pool = "{context_pool}" }}
boot_timeout_secs = 5
[profiles.deploy]
secrets = ["npm-token", "deploy-key"]
env_secrets = ["npm-token"]
"#,
        dir = secrets_dir.display(),
        bucket = sealed.bucket,
        key = sealed.key,
    )
}

fn all_forms() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forms = vec![
        NPM_TOKEN.to_owned(),
        DB_PASS.to_owned(),
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY".to_owned(),
    ];
    forms.push(b64.encode(NPM_TOKEN));
    forms.push(b64.encode(format!("{NPM_TOKEN}\n")));
    forms
}

fn assert_no_secret(what: &str, text: &str) {
    for form in all_forms() {
        assert!(
            !text.contains(&form),
            "{what} contains a secret form {form:?}:\n{text}"
        );
    }
}

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
    assert_no_secret("log.txt", &log);
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

/// An agent whose pool's secrets are sealed in a bundle in S3, with a tmpfs
/// secrets dir of its own.
struct SecretAgent {
    shm: PathBuf,
    config: TestConfig,
    agent: AgentProcess,
    /// Where the bundle was sealed from; removed with the value.
    _bundle: tempfile::TempDir,
}

impl SecretAgent {
    async fn start(s: &Scenario, instance: &str) -> SecretAgent {
        let Scenario { stack, aws, pool } = s;
        let bundle = tempfile::tempdir().unwrap();
        let sealed = seal(aws, pool, bundle.path()).await;
        let shm = secrets_dir();
        let config = agent_config(
            stack,
            pool,
            &aws.endpoint,
            &unique(instance),
            &secrets_config(&sealed, &shm, &sealed.pool_name),
        );
        let agent = AgentProcess::start(&config, "agent");
        SecretAgent {
            shm,
            config,
            agent,
            _bundle: bundle,
        }
    }
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

/// Starts an agent that must fail to boot; its exit code and stderr-ish last line.
async fn boot_failure(stack: &Stack, aws: &Aws, pool: &Pool, extra: &str) -> (Option<i32>, String) {
    let config = agent_config(stack, pool, &aws.endpoint, &unique("i-boot"), extra);
    let mut agent = AgentProcess::start(&config, "agent");
    let code = agent.wait_exit(LONG).await;
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("deckhand: "))
        .unwrap_or_else(|| panic!("no one-line cause:\n{log}"))
        .to_owned();
    assert_eq!(agent.count("Ready; serving the queue."), 0, "{log}");
    (code, last)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bundles_stop_the_agent_with_exit_78_and_one_line() {
    let Some(s) = Scenario::new("badseal").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let dir = tempfile::tempdir().unwrap();
    let sealed = seal(aws, pool, dir.path()).await;
    let shm = secrets_dir();

    let (code, line) = boot_failure(
        stack,
        aws,
        pool,
        &secrets_config(&sealed, &shm, "some-other-pool"),
    )
    .await;
    assert_eq!(code, Some(78), "wrong context: {line}");
    assert!(
        line.contains("KMS refused the bundle's data key (InvalidCiphertextException)"),
        "{line}"
    );

    let missing = Sealed {
        key: "secrets/nothing-here.json".into(),
        ..seal(aws, pool, dir.path()).await
    };
    let (code, line) = boot_failure(
        stack,
        aws,
        pool,
        &secrets_config(&missing, &shm, &missing.pool_name),
    )
    .await;
    assert_eq!(code, Some(78), "missing object: {line}");
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
    let (code, line) = boot_failure(
        stack,
        aws,
        pool,
        &secrets_config(&tampered, &shm, &tampered.pool_name),
    )
    .await;
    assert_eq!(code, Some(78), "tampered: {line}");
    assert!(line.contains("fails its integrity check"), "{line}");

    // The pool may only decrypt with its own key; this bundle was sealed with
    // another one, so KMS denies it.
    let denied = seal(aws, pool, dir.path()).await;
    let other_key = kms(aws)
        .await
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    // (kms_key_id belongs to [secrets], which the profile section follows.)
    let config = secrets_config(&denied, &shm, &denied.pool_name).replace(
        "[profiles.deploy]",
        &format!("kms_key_id = \"{other_key}\"\n[profiles.deploy]"),
    );
    let (code, line) = boot_failure(stack, aws, pool, &config).await;
    assert_eq!(code, Some(78), "denied: {line}");
    assert!(
        line.contains("KMS refused the bundle's data key (AccessDeniedException)"),
        "{line}"
    );

    // Secrets on a disk are refused before any job could write them there.
    // Under target/: on the disk whatever TMPDIR says.
    let on_disk = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("not-tmpfs"));
    let (code, line) = boot_failure(
        stack,
        aws,
        pool,
        &secrets_config(&sealed, &on_disk, &sealed.pool_name),
    )
    .await;
    assert_eq!(code, Some(78));
    assert!(line.contains("not on tmpfs"), "{line}");
    std::fs::remove_dir_all(&shm).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_credentials_come_from_a_secret() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let auth_image =
        std::env::var("STACK_AUTH_IMAGE").expect("STACK_AUTH_IMAGE from scripts/stack env");
    let auth_registry = std::env::var("STACK_AUTH_REGISTRY").unwrap();
    let aws = Aws::new().await;
    let pool = aws.pool("regauth", 5).await;
    let dir = tempfile::tempdir().unwrap();
    let sealed = seal(&aws, &pool, dir.path()).await;
    // Only a pull can bring it back: the registry wants a password for that.
    let _ = std::process::Command::new("docker")
        .args(["rmi", &auth_image])
        .output();

    let exec_config = |with_auth: bool| {
        let auth = if with_auth {
            format!("[images.registry_auth]\n\"{auth_registry}\" = \"registry-cred\"\n")
        } else {
            String::new()
        };
        TestConfig::new(
            &stack,
            &format!(
                "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n[images]\nallowed_registries = [\"{main}\", \"{auth_registry}\"]\n{auth}[secrets]\nbucket = \"{bucket}\"\nkey = \"{key}\"\ncontext = {{ pool = \"{pool_name}\" }}\n",
                endpoint = aws.endpoint,
                main = stack.registry,
                bucket = sealed.bucket,
                key = sealed.key,
                pool_name = sealed.pool_name,
            ),
        )
    };
    let id = unique("noauth");
    let without = exec(&exec_config(false), &job(&id, &auth_image, &["true"]));
    assert_eq!(without.code, Some(69), "{}", without.stdout);
    assert_eq!(without.result["status"], "error");

    let id = unique("auth");
    let with = exec(
        &exec_config(true),
        &job(
            &id,
            &auth_image,
            &["sh", "-c", "echo pulled with a password"],
        ),
    );
    assert_eq!(with.code, Some(0), "{}\n{}", with.stdout, with.stderr);
    assert!(with.logged("Pulled image."));
    assert_eq!(with.output("stdout"), ["pulled with a password"]);
    assert_no_secret("exec output", &with.stdout);
    assert!(!with.stdout.contains("stack-registry-secret"));
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_images_are_pulled_before_the_first_job_and_only_once() {
    let Some(s) = Scenario::new("warm").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let warm = format!("{}/test/{}:2.0", stack.registry, unique("warm"));
    docker(&["tag", &stack.image, &warm]);
    docker(&["push", "--quiet", &warm]);
    docker(&["rmi", &warm]);
    let config = agent_config(
        stack,
        pool,
        &aws.endpoint,
        &unique("i-warm"),
        &format!("[images]\nwarm = [\"{warm}\"]"),
    );
    // The job is waiting before the agent starts: only the order of the log can
    // show the warm pull came first.
    let id = unique("after-warm");
    aws.send_job(&pool.queue_url, &job(&id, &warm, &["true"]))
        .await;
    let mut first = AgentProcess::start(&config, "first");
    first.wait_log("Result recorded.", LONG).await;
    let msgs: Vec<String> = first
        .logs()
        .iter()
        .map(|l| l["msg"].as_str().unwrap().to_owned())
        .collect();
    let position = |m: &str| {
        msgs.iter()
            .position(|x| x == m)
            .unwrap_or_else(|| panic!("no {m:?} in {msgs:#?}"))
    };
    assert!(position("Pulled image.") < position("Warm image ready."));
    assert!(position("Warm image ready.") < position("Ready; serving the queue."));
    assert!(position("Ready; serving the queue.") < position("Job started."));
    first.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(first.wait_exit(LONG).await, Some(0));

    let second = AgentProcess::start(&config, "second");
    second.wait_log("Ready; serving the queue.", LONG).await;
    assert_eq!(
        second.count("Pulled image."),
        0,
        "present images are not pulled again"
    );
    assert_eq!(second.count("Warm image ready."), 1);
    drop(second);
    docker(&["rmi", &warm]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_image_that_cannot_be_pulled_fails_the_boot() {
    let Some(s) = Scenario::new("warmfail").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let missing = format!("{}/ci/never-pushed:1.0", stack.registry);
    let (code, line) = boot_failure(
        stack,
        aws,
        pool,
        &format!("[images]\nwarm = [\"{missing}\"]"),
    )
    .await;
    assert_eq!(code, Some(69));
    assert!(
        line.starts_with(&format!("deckhand: warm image {missing}: pull")),
        "{line}"
    );

    let (_config, agent) = s.agent(
        "i-warmgo",
        &format!("[images]\nwarm = [\"{missing}\"]\nwarm_failure = \"continue\""),
    );
    agent.wait_log("Ready; serving the queue.", LONG).await;
}

fn cache_volumes(source: &str) -> Vec<String> {
    docker(&[
        "volume",
        "ls",
        "--filter",
        &format!("label=deckhand.cache.source={source}"),
        "--format",
        "{{.Name}}",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_volume_is_extracted_once_reused_and_swapped() {
    let Some(s) = Scenario::new("cache").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let key = "cache/libs.tar.gz";
    let source = format!("s3://{}/{key}", pool.bucket);
    let libs = tar_gz(&[("version.txt", "v1\n"), ("lib/dep.txt", "a library\n")]);
    aws.put(&pool.bucket, key, libs).await;
    let (config, mut first) = s.agent(
        "i-cache",
        &format!("[agent]\nslots = 2\n[cache]\nsource = \"{source}\"\nrefresh_secs = 1"),
    );
    first.wait_log("Cache extracted.", LONG).await;
    let id = unique("reads-cache");
    let script = "cat /cache/version.txt /cache/lib/dep.txt; touch /cache/x 2>/dev/null && echo WRITABLE || echo read-only";
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", script]),
    )
    .await;
    first.wait_log("Result recorded.", LONG).await;
    let log = aws.object(&pool.bucket, &keys::log(&id)).await.unwrap();
    assert_eq!(
        String::from_utf8(log).unwrap(),
        "v1\na library\nread-only\n"
    );
    first.signal(nix::sys::signal::Signal::SIGTERM);
    first.wait_exit(LONG).await;

    // A restart with the same object downloads nothing.
    let second = AgentProcess::start(&config, "second");
    second.wait_log("Ready; serving the queue.", LONG).await;
    assert_eq!(
        second.count("Cache volume is current; nothing to download."),
        1
    );
    assert_eq!(second.count("Extracting the cache archive."), 0);
    assert_eq!(cache_volumes(&source).len(), 1);

    // A job that reads the cache before and after a new version lands.
    let old_reader = unique("old-reader");
    // It reads the cache, then waits for the test to drop a file into its
    // workspace (after the swap), then reads the cache again.
    let script = "cat /cache/version.txt; while [ ! -e /workspace/go ]; do sleep 0.2; done; cat /cache/version.txt";
    aws.send_job(
        &pool.queue_url,
        &job(&old_reader, &stack.image, &["sh", "-c", script]),
    )
    .await;
    second.wait_log("Job started.", LONG).await;
    aws.put(&pool.bucket, key, tar_gz(&[("version.txt", "v2\n")]))
        .await;
    second
        .wait_log("Switched to a new cache version for new jobs.", LONG)
        .await;
    let new_reader = unique("new-reader");
    aws.send_job(
        &pool.queue_url,
        &job(&new_reader, &stack.image, &["cat", "/cache/version.txt"]),
    )
    .await;
    let wait_log = |id: String| {
        let aws = &aws;
        let bucket = pool.bucket.clone();
        async move { String::from_utf8(aws.wait_object(&bucket, &keys::log(&id)).await).unwrap() }
    };
    assert_eq!(wait_log(new_reader.clone()).await, "v2\n");
    assert_eq!(
        cache_volumes(&source).len(),
        2,
        "the old version stays while a job uses it"
    );
    let workspace = docker(&[
        "volume",
        "ls",
        "--filter",
        &format!("label=deckhand.job_id={old_reader}"),
        "--format",
        "{{.Name}}",
    ]);
    let mountpoint = docker(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        workspace.trim(),
    ]);
    std::fs::write(Path::new(mountpoint.trim()).join("go"), "").unwrap();
    assert_eq!(wait_log(old_reader.clone()).await, "v1\nv1\n");
    eventually("the old cache volume to be removed", LONG, || async {
        cache_volumes(&source).len() == 1
    })
    .await;
    drop(second);
    for volume in cache_volumes(&source) {
        docker(&["volume", "rm", &volume]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_archive_that_escapes_is_refused() {
    let Some(s) = Scenario::new("escape").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let key = "cache/evil.tar";
    let evil = raw_tar(&[
        ("fine.txt", "ok", tar::EntryType::Regular),
        (
            "../../../../tmp/deckhand-escaped.txt",
            "evil",
            tar::EntryType::Regular,
        ),
    ]);
    aws.put(&pool.bucket, key, evil).await;
    let source = format!("s3://{}/{key}", pool.bucket);
    let (code, line) =
        boot_failure(stack, aws, pool, &format!("[cache]\nsource = \"{source}\"")).await;
    assert_eq!(code, Some(78));
    assert!(
        line.contains("has an entry outside the volume: \"../../../../tmp/deckhand-escaped.txt\""),
        "{line}"
    );
    assert!(
        cache_volumes(&source).is_empty(),
        "the partial volume is removed"
    );
}

/// A one-request-at-a-time HTTP server on loopback that records what it is sent.
async fn webhook_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(Vec<String>, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = stream.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let lines: Vec<String> = head.lines().map(str::to_owned).collect();
            let length: usize = lines
                .iter()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < head_end + length {
                let n = stream.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let _ = tx.send((lines, buf[head_end..head_end + length].to_vec()));
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn results_reach_the_results_queue_and_a_signed_webhook() {
    use hmac::Mac;
    let Some(s) = Scenario::new("notify-results").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let results_queue = aws.pool("results-queue", 5).await.queue_url;
    let dir = tempfile::tempdir().unwrap();
    let sealed = seal(aws, pool, dir.path()).await;
    let (url, mut posts) = webhook_receiver().await;
    let shm = secrets_dir();
    let (_config, _agent) = s.agent("i-hook", &format!(
            "{}\n[results]\nqueue_url = \"{results_queue}\"\nwebhook_url = \"{url}\"\nwebhook_secret = \"db-pass\"\n",
            secrets_config(&sealed, &shm, &sealed.pool_name)
        ));
    let id = unique("announced");
    aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["true"]))
        .await;

    let (head, body) = tokio::time::timeout(LONG, posts.recv())
        .await
        .unwrap()
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(result["id"], id.as_str());
    assert_eq!(result["status"], "succeeded");
    let signature = head
        .iter()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-deckhand-signature:")
                .map(|v| v.trim().to_owned())
        })
        .expect("a signature header");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(DB_PASS.as_bytes()).unwrap();
    mac.update(&body);
    assert_eq!(
        signature,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );

    let start = tokio::time::Instant::now();
    let sent = loop {
        let sent = aws.drain_queue(&results_queue).await;
        if !sent.is_empty() {
            break sent;
        }
        assert!(start.elapsed() < LONG, "no result on the results queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let queued: serde_json::Value = serde_json::from_str(sent[0].body().unwrap()).unwrap();
    assert_eq!(queued, result);
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
