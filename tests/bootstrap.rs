//! What a host readies before its first job, against moto (S3, KMS), the real
//! Docker engine and the local registries: warm images pulled once, before it
//! serves (or the boot failing), and registry credentials from a sealed secret.

mod common;

use common::agent::{AgentProcess, agent_config};
use common::aws::Aws;
use common::boot::boot_failure;
use common::scenario::Scenario;
use common::sealed::*;
use common::*;

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
