//! The agent's disk, against moto and the real Docker engine: a full disk collects
//! the agent's own unused images and stops intake, and a huge log is spooled to
//! disk and uploaded whole.

mod common;

use common::agent::{AgentProcess, agent_config};
use common::scenario::Scenario;
use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_log_is_spooled_to_disk_and_uploaded_whole() {
    let Some(s) = Scenario::new("hugelog").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let (config, agent) = s.agent("i-huge", "");
    let id = unique("chatty");
    // 20 MB of output in 10 kB lines: well past the 2 MiB kept in memory.
    let script = "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 10000; echo; echo the end";
    aws.send_job(
        &pool.queue_url,
        &job(&id, &stack.image, &["sh", "-c", script]),
    )
    .await;
    let r = aws.wait_result(pool, &id).await;
    assert_eq!(r["status"], "succeeded");
    let spooled = agent.count("The job's log is large; spooling it to disk.");
    let log = aws.object(&pool.bucket, &keys::log(&id)).await.unwrap();
    let text = String::from_utf8(log).unwrap();
    assert_eq!(text.matches('x').count(), 20_000_000);
    assert!(text.ends_with("\nthe end\n"));
    assert_eq!(spooled, 1, "{} bytes", text.len());
    let spool = config.dir.path().join("spool");
    assert!(
        std::fs::read_dir(&spool).unwrap().next().is_none(),
        "the spool file is removed"
    );
}

/// An image of its own (a new layer on the stack's busybox), so removing it touches
/// nothing another test uses. Removed on drop, if the test did not.
struct OwnImage(String);

impl OwnImage {
    fn new(stack: &Stack) -> OwnImage {
        let name = format!("{}/ci/gc-{}:1", stack.registry, unique("victim"));
        let container = docker(&["create", "--network", &stack.network, &stack.image, "true"]);
        let container = container.trim();
        docker(&["commit", "-c", "LABEL deckhand.test=gc", container, &name]);
        docker(&["rm", container]);
        OwnImage(name)
    }

    fn exists(&self) -> bool {
        std::process::Command::new("docker")
            .args(["image", "inspect", &self.0])
            .output()
            .unwrap()
            .status
            .success()
    }
}

impl Drop for OwnImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// An agent with room to spare runs a job from `victim` and one from the stack's
/// image, and so records both as its own; it removes neither.
async fn runs_a_job_from_each_image(s: &Scenario, config: &TestConfig, victim: &OwnImage) {
    let Scenario { stack, aws, pool } = s;
    let mut agent = AgentProcess::start(config, "roomy");
    let (a, b) = (unique("own"), unique("stack"));
    aws.send_job(&pool.queue_url, &job(&a, &victim.0, &["true"]))
        .await;
    aws.send_job(&pool.queue_url, &job(&b, &stack.image, &["true"]))
        .await;
    for id in [&a, &b] {
        assert_eq!(aws.wait_result(pool, id).await["status"], "succeeded");
    }
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    assert_eq!(agent.count("Removed an unused image."), 0);
    assert!(victim.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_collects_unused_images_and_stops_intake() {
    let Some(s) = Scenario::new("disk").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let victim = OwnImage::new(stack);
    let work = tempfile::tempdir().unwrap();
    let instance = unique("i-disk");
    let config = |disk: &str, warm: &str| {
        agent_config(
            stack,
            pool,
            &aws.endpoint,
            &instance,
            &format!(
                "[agent]\nwork_dir = \"{}\"\n[images]\nwarm = [{warm}]\n[disk]\n{disk}",
                work.path().display()
            ),
        )
    };

    // First, with room to spare: the agent runs a job from each image and so
    // records both as its own.
    let roomy = config("min_free_mb = 1\ngc_free_mb = 1", "");
    runs_a_job_from_each_image(&s, &roomy, &victim).await;

    // Then the same host with a disk that can never have enough room (1 PB):
    // its own unused image goes, the warm one stays, and no job is taken.
    let full = config(
        "min_free_mb = 1000000000\ngc_free_mb = 1000000000",
        &format!("\"{}\"", stack.image),
    );
    let mut agent = AgentProcess::start(&full, "full");
    agent
        .wait_log("Disk space is low; not receiving.", LONG)
        .await;
    let removed: Vec<String> = agent
        .logs()
        .into_iter()
        .filter(|l| l["msg"] == "Removed an unused image.")
        .map(|l| l["image"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        removed.len(),
        1,
        "only the agent's own unused image: {removed:?}"
    );
    assert!(!victim.exists(), "{} removed", victim.0);
    assert!(
        std::process::Command::new("docker")
            .args(["image", "inspect", &stack.image])
            .output()
            .unwrap()
            .status
            .success(),
        "the warm image stays"
    );
    let id = unique("waits");
    aws.send_job(&pool.queue_url, &job(&id, &stack.image, &["true"]))
        .await;
    let seen = agent.count("Disk space is low; not receiving.");
    eventually("two more disk checks", LONG, || async {
        assert_eq!(
            aws.counts(&pool.queue_url).await,
            (1, 0),
            "received with a full disk"
        );
        agent.count("Disk space is low; not receiving.") >= seen + 2
    })
    .await;
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("images.json")).unwrap()).unwrap();
    assert_eq!(
        record.as_object().unwrap().len(),
        1,
        "the warm image is still recorded: {record}"
    );
}
