//! A pool's secrets sealed into a bundle in S3 (through `deckhand seal`, under a
//! KMS key of their own), the agent that opens it, and the forms of each secret a
//! log must never show.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::agent::{AgentProcess, agent_config};
use super::aws::{Aws, Pool};
use super::scenario::Scenario;
use super::*;

pub const NPM_TOKEN: &str = "npm_S3cr3tV4lue_0123456789";

pub const DEPLOY_KEY: &str =
    "-----BEGIN KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldY\n-----END KEY-----\n";

pub const DB_PASS: &str = "db-pass-NOT-for-this-job";

pub const REGISTRY_CRED: &str = "deckhand:stack-registry-secret";

/// A KMS key, a sealed bundle in S3 (through `deckhand seal`) and its context.
pub struct Sealed {
    pub bucket: String,
    pub key: String,
    pub pool_name: String,
}

pub async fn kms(aws: &Aws) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(
        &aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(deckhand::tls::aws_http_client())
            .endpoint_url(&aws.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await,
    )
}

/// A new KMS key in moto: its id.
pub async fn new_kms_key(aws: &Aws) -> String {
    kms(aws)
        .await
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id
}

/// Seals the test secrets into a bundle of its own (a unique key) under a new KMS key.
pub async fn seal(aws: &Aws, pool: &Pool, dir: &Path) -> Sealed {
    seal_with(aws, pool, dir, "").await
}

/// [`seal`], with `extra` secrets (TOML lines) beside the test's own.
pub async fn seal_with(aws: &Aws, pool: &Pool, dir: &Path, extra: &str) -> Sealed {
    let key_id = new_kms_key(aws).await;
    std::fs::write(dir.join("deploy.pem"), DEPLOY_KEY).unwrap();
    let input = dir.join("secrets.toml");
    std::fs::write(
        &input,
        format!(
            "npm-token = \"{NPM_TOKEN}\"\ndeploy-key = {{ file = \"deploy.pem\" }}\ndb-pass = \"{DB_PASS}\"\nregistry-cred = \"{REGISTRY_CRED}\"\n{extra}\n"
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
pub fn secrets_dir() -> PathBuf {
    let dir = PathBuf::from("/dev/shm").join(unique("deckhand-secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn secrets_config(sealed: &Sealed, secrets_dir: &Path, context_pool: &str) -> String {
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

pub fn all_forms() -> Vec<String> {
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

pub fn assert_no_secret(what: &str, text: &str) {
    for form in all_forms() {
        assert!(
            !text.contains(&form),
            "{what} contains a secret form {form:?}:\n{text}"
        );
    }
}

/// An agent whose pool's secrets are sealed in a bundle in S3, with a tmpfs
/// secrets dir of its own.
pub struct SecretAgent {
    pub shm: PathBuf,
    pub config: TestConfig,
    pub agent: AgentProcess,
    /// Where the bundle was sealed from; removed with the value.
    pub _bundle: tempfile::TempDir,
}

impl SecretAgent {
    pub async fn start(s: &Scenario, instance: &str) -> SecretAgent {
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
