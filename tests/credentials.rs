//! Per-job AWS credentials: a job of a profile with `role_arn` gets that role's
//! credentials through the ECS container-credentials variables, from STS (moto),
//! with its own token, and only while it runs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::agent::{AgentProcess, agent_config};
use common::scenario::Scenario;
use common::*;
use serde_json::json;

const ROLE: &str = "arn:aws:iam::123456789012:role/ci-deploy";

/// The container of a job the agent started.
fn container_of(agent: &AgentProcess, job_id: &str) -> String {
    agent
        .logs()
        .into_iter()
        .find(|l| l["msg"] == "Job started." && l["job_id"] == job_id)
        .expect("the job started")["container"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The environment Docker gave the job's container.
fn container_env(agent: &AgentProcess, job_id: &str) -> HashMap<String, String> {
    let container = container_of(agent, job_id);
    let env: Vec<String> = serde_json::from_str(&docker(&[
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        &container,
    ]))
    .unwrap();
    env.into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

async fn ask(uri: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = deckhand::tls::reqwest_builder().build().unwrap().get(uri);
    if let Some(token) = token {
        request = request.header("Authorization", token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(json!(body)))
}

/// The job's endpoint serves the role's credentials, reused until near expiry, to
/// its token and to no other.
async fn the_role_is_served_to_its_token_alone(agent: &AgentProcess, uri: &str, token: &str) {
    let (status, first) = ask(uri, Some(token)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["RoleArn"], ROLE);
    for field in ["AccessKeyId", "SecretAccessKey", "Token"] {
        assert!(
            !first[field].as_str().unwrap().is_empty(),
            "{field} in {first}"
        );
    }
    let expiration =
        chrono::DateTime::parse_from_rfc3339(first["Expiration"].as_str().unwrap()).unwrap();
    assert!(expiration > chrono::Utc::now() + chrono::TimeDelta::minutes(30));
    let (_, again) = ask(uri, Some(token)).await;
    assert_eq!(
        again["AccessKeyId"], first["AccessKeyId"],
        "reused until near expiry"
    );
    assert_eq!(agent.count("Assumed the job's role."), 1);

    assert_eq!(ask(uri, Some("not-the-token")).await.0, 403);
    assert_eq!(ask(uri, None).await.0, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_gets_its_profiles_role_and_only_while_it_runs() {
    let Some(s) = Scenario::new("creds").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (_config, agent) = s.agent("i-creds", &format!(
            "[agent]\nslots = 2\n[credentials]\nlisten = \"127.0.0.1:0\"\n[profiles.deploy]\nrole_arn = \"{ROLE}\""
        ));
    let (deploy, plain) = (unique("deploy"), unique("plain"));
    let mut body = job(
        &deploy,
        &stack.image,
        &[
            "sh",
            "-c",
            "echo token=$(cat $AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE); sleep 600",
        ],
    );
    body["profile"] = json!("deploy");
    body["timeout_secs"] = json!(8);
    aws.send_job(&pool.queue_url, &body).await;
    let mut body = job(&plain, &stack.image, &["sleep", "600"]);
    body["timeout_secs"] = json!(8);
    aws.send_job(&pool.queue_url, &body).await;
    eventually("both jobs to run", LONG, || async {
        agent.count("Job started.") == 2
    })
    .await;

    let env = container_env(&agent, &deploy);
    let uri = env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].clone();
    let token_file = env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"].clone();
    assert_eq!(
        token_file,
        "/run/secrets/.aws-container-authorization-token"
    );
    assert!(
        !env.contains_key("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        "the token is never in the container's config on disk: {env:?}"
    );
    let token = docker(&["exec", &container_of(&agent, &deploy), "cat", &token_file]);
    let token = token.trim().to_owned();
    assert!(uri.ends_with("/v1/credentials"), "{uri}");
    assert_eq!(token.len(), 64);
    let other = container_env(&agent, &plain);
    assert!(
        !other.keys().any(|k| k.starts_with("AWS_")),
        "a profile without a role gets no AWS variables: {other:?}"
    );

    the_role_is_served_to_its_token_alone(&agent, &uri, &token).await;

    // The job ends (its timeout): its token with it.
    let start = tokio::time::Instant::now();
    while aws
        .json(&pool.bucket, &keys::result(&deploy))
        .await
        .is_none()
    {
        assert!(start.elapsed() < LONG, "the job to end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = ask(&uri, Some(&token)).await;
    assert_eq!(status, 403, "{body}");
    let log = aws.object(&pool.bucket, &keys::log(&deploy)).await.unwrap();
    assert_eq!(
        String::from_utf8(log).unwrap(),
        "token=***\n",
        "the token is masked"
    );
    assert!(
        !std::fs::read_to_string(agent.log_path())
            .unwrap()
            .contains(&token),
        "nor is it in the agent's output"
    );
    assert_clean(&deploy);
}

#[test]
fn exec_cannot_serve_a_role_and_says_so() {
    let Some(stack) = Stack::or_skip() else {
        return;
    };
    let config = TestConfig::new(&stack, &format!("[profiles.deploy]\nrole_arn = \"{ROLE}\""));
    let id = unique("exec-role");
    let mut spec = job(&id, &stack.image, &["true"]);
    spec["profile"] = json!("deploy");
    let run = exec(&config, &spec);
    assert_eq!(run.result["status"], "error", "{}", run.stdout);
    assert!(
        run.result["reason"]
            .as_str()
            .unwrap()
            .contains("served by `deckhand run` only"),
        "{}",
        run.result
    );
    assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_says_whether_the_credentials_address_can_be_served() {
    let Some(s) = Scenario::new("creds-check").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let check = |listen: &str| {
        let config = agent_config(
            stack,
            pool,
            &aws.endpoint,
            &unique("i-creds-check"),
            &format!(
                "[credentials]\nlisten = \"{listen}\"\n[profiles.deploy]\nrole_arn = \"{ROLE}\""
            ),
        );
        let output = deckhand()
            .args(["--config", path_str(&config.path), "check"])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, report) = check(&format!("127.0.0.1:{port}"));
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("ok    credentials"), "{report}");
    // An address this host does not have (TEST-NET-1), as 169.254.170.2 is
    // until deckhand-imds-block.service puts it on lo.
    let (code, report) = check("192.0.2.1:51679");
    assert_ne!(code, Some(0), "{report}");
    assert!(report.contains("FAIL  credentials"), "{report}");
}
