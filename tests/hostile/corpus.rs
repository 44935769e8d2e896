//! The hostile corpus: messages a careless or malicious producer might send,
//! each with what must become of it. `{ID}` stands for a fresh job id, `{IMG}`
//! for the stack's image, `{REG}` for its registry.

/// Where a message's one result is recorded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Under {
    /// The id it names: a well-formed job (run, or refused by policy).
    Id,
    /// Its SQS message id (`unknown` under `exec`): it is not a job by the schema.
    MessageId,
}

pub struct Case {
    pub name: &'static str,
    pub body: String,
    /// `None`: it runs and succeeds. `Some(words)`: rejected, the reason saying
    /// each of them.
    pub rejected: Option<&'static [&'static str]>,
    pub under: Under,
}

fn job(fields: &str) -> String {
    format!(r#"{{"version":1,"id":"{{ID}}","image":"{{IMG}}","command":["true"]{fields}}}"#)
}

/// A job whose `command` is `json`.
fn command(json: &str) -> String {
    job("").replace(r#""command":["true"]"#, &format!(r#""command":{json}"#))
}

fn rejected(
    name: &'static str,
    body: String,
    words: &'static [&'static str],
    under: Under,
) -> Case {
    Case {
        name,
        body,
        rejected: Some(words),
        under,
    }
}

fn policy(name: &'static str, fields: &str, words: &'static [&'static str]) -> Case {
    rejected(name, job(fields), words, Under::Id)
}

/// A job refused for its `image` (`{REG}` stands for the stack's registry).
fn image(name: &'static str, image: &str, words: &'static [&'static str]) -> Case {
    rejected(name, job("").replace("{IMG}", image), words, Under::Id)
}

fn schema(name: &'static str, body: String, words: &'static [&'static str]) -> Case {
    rejected(name, body, words, Under::MessageId)
}

fn runs(name: &'static str, body: String) -> Case {
    Case {
        name,
        body,
        rejected: None,
        under: Under::Id,
    }
}

pub fn cases() -> Vec<Case> {
    [
        the_body(),
        version(),
        id(),
        image_and_command(),
        env_secrets_and_profile(),
        timeout_and_resources(),
        workdir_artifacts_and_inputs(),
        edges_that_run(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The body itself: not JSON, not an object, cut short, nested too deep, a key
/// twice, unknown fields, a squat.
fn the_body() -> Vec<Case> {
    let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
    vec![
        schema("empty", String::new(), &["body", "not valid JSON"]),
        schema("null", "null".into(), &["body", "must be a JSON object"]),
        schema("array", "[]".into(), &["body", "must be a JSON object"]),
        schema("number", "42".into(), &["body", "must be a JSON object"]),
        schema(
            "string",
            r#""a job""#.into(),
            &["body", "must be a JSON object"],
        ),
        schema(
            "truncated",
            r#"{"version":1,"id":"x""#.into(),
            &["body", "not valid JSON"],
        ),
        schema(
            "trailing garbage",
            format!("{} and more", job("")),
            &["body", "not valid JSON"],
        ),
        schema(
            "byte order mark",
            format!("\u{feff}{}", job("")),
            &["body", "not valid JSON"],
        ),
        schema(
            "deep nesting",
            format!(r#"{{"version":1,"id":"{{ID}}","image":"{{IMG}}","env":{deep}}}"#),
            &["body", "recursion limit"],
        ),
        schema(
            "duplicate id",
            r#"{"version":1,"id":"{ID}","id":"other","image":"{IMG}"}"#.into(),
            &["body", "\"id\" is named twice"],
        ),
        schema(
            "duplicate env key",
            job(r#","env":{"A":"1","A":"2"}"#),
            &["body", "\"A\" is named twice"],
        ),
        schema(
            "unknown field",
            job(r#","bogus":1"#),
            &["unknown field `bogus`"],
        ),
        schema(
            "field in the wrong case",
            job(r#","Env":{}"#),
            &["unknown field `Env`"],
        ),
        schema(
            "unknown resource",
            job(r#","resources":{"gpus":1}"#),
            &["resources", "unknown field `gpus`"],
        ),
        schema(
            "squat attempt",
            r#"{"version":1,"id":"{ID}","bogus":true}"#.into(),
            &["unknown field `bogus`"],
        ),
    ]
}

/// `version`: missing, of the wrong type or value.
fn version() -> Vec<Case> {
    vec![
        schema(
            "version 2",
            r#"{"version":2,"id":"{ID}","image":"{IMG}"}"#.into(),
            &["version", "unsupported version 2"],
        ),
        schema(
            "version as text",
            r#"{"version":"1","id":"{ID}","image":"{IMG}"}"#.into(),
            &["version", "invalid type"],
        ),
        schema(
            "version fractional",
            r#"{"version":1.5,"id":"{ID}","image":"{IMG}"}"#.into(),
            &["version", "invalid type"],
        ),
        schema(
            "version negative",
            r#"{"version":-1,"id":"{ID}","image":"{IMG}"}"#.into(),
            &["version"],
        ),
        schema(
            "version missing",
            r#"{"id":"{ID}","image":"{IMG}"}"#.into(),
            &["missing field `version`"],
        ),
    ]
}

/// `id`: missing, of the wrong type, empty, too long, hidden, a path, not ASCII.
fn id() -> Vec<Case> {
    vec![
        schema(
            "id missing",
            r#"{"version":1,"image":"{IMG}"}"#.into(),
            &["missing field `id`"],
        ),
        schema(
            "id a number",
            r#"{"version":1,"id":5,"image":"{IMG}"}"#.into(),
            &["id", "invalid type"],
        ),
        schema(
            "id null",
            r#"{"version":1,"id":null,"image":"{IMG}"}"#.into(),
            &["id", "invalid type"],
        ),
        rejected(
            "id empty",
            job("").replace("{ID}", ""),
            &["id"],
            Under::MessageId,
        ),
        rejected(
            "id too long",
            job("").replace("{ID}", &"a".repeat(129)),
            &["id"],
            Under::MessageId,
        ),
        rejected(
            "id hidden",
            job("").replace("{ID}", ".hidden"),
            &["id"],
            Under::MessageId,
        ),
        rejected(
            "id a path",
            job("").replace("{ID}", "../escape"),
            &["id"],
            Under::MessageId,
        ),
        rejected(
            "id with a slash",
            job("").replace("{ID}", "a/b"),
            &["id"],
            Under::MessageId,
        ),
        rejected(
            "id with a space",
            job("").replace("{ID}", "a b"),
            &["id"],
            Under::MessageId,
        ),
        rejected(
            "id not ASCII",
            job("").replace("{ID}", "caf\u{e9}"),
            &["id"],
            Under::MessageId,
        ),
    ]
}

/// `image` against the policy, and `command`.
fn image_and_command() -> Vec<Case> {
    vec![
        schema(
            "image missing",
            r#"{"version":1,"id":"{ID}"}"#.into(),
            &["missing field `image`"],
        ),
        image("image empty", "", &["image"]),
        image(
            "image latest",
            "{REG}/ci/busybox:latest",
            &["image", "latest"],
        ),
        image("image without a tag", "{REG}/ci/busybox", &["image"]),
        image("image without a registry", "busybox:1.35.0", &["image"]),
        image(
            "image from another registry",
            "registry.example.com/ci/busybox:1.35.0",
            &["image"],
        ),
        image("image in upper case", "{REG}/CI/BusyBox:1.35.0", &["image"]),
        image(
            "image with a bad digest",
            "{REG}/ci/busybox@sha256:abc",
            &["image"],
        ),
        image(
            "image far too long",
            &format!("{{REG}}/{}:1", "a".repeat(600)),
            &["image"],
        ),
        // command
        rejected(
            "command empty",
            command("[]"),
            &["command", "must not be empty"],
            Under::Id,
        ),
        schema(
            "command a string",
            command(r#""true""#),
            &["command", "invalid type"],
        ),
        schema(
            "command of numbers",
            command("[1]"),
            &["command", "invalid type"],
        ),
        rejected(
            "command with a NUL",
            command(r#"["a\u0000b"]"#),
            &["command", "NUL"],
            Under::Id,
        ),
    ]
}

/// `env` (names, reserved prefixes, sizes), `secrets` and `profile`.
fn env_secrets_and_profile() -> Vec<Case> {
    let long_key = "K".repeat(200_000);
    vec![
        policy(
            "env name starts with a digit",
            r#","env":{"1A":"x"}"#,
            &["env.1A"],
        ),
        policy(
            "env name with a space",
            r#","env":{"A B":"x"}"#,
            &["env.A B"],
        ),
        policy(
            "env reserved DECKHAND_",
            r#","env":{"DECKHAND_JOB_ID":"x"}"#,
            &["env.DECKHAND_JOB_ID", "reserved"],
        ),
        policy(
            "env reserved AWS_CONTAINER_",
            r#","env":{"AWS_CONTAINER_CREDENTIALS_FULL_URI":"http://evil"}"#,
            &["reserved"],
        ),
        policy(
            "env value with a NUL",
            r#","env":{"A":"a\u0000b"}"#,
            &["env.A", "NUL"],
        ),
        schema(
            "env value a number",
            job(r#","env":{"A":1}"#),
            &["env", "invalid type"],
        ),
        schema(
            "env an array",
            job(r#","env":["A=1"]"#),
            &["env", "invalid type"],
        ),
        policy(
            "env name 200 KB",
            &format!(r#","env":{{"{long_key}":"x"}}"#),
            &["env.KKKK", "at most 256 bytes"],
        ),
        policy(
            "env value 200 KB",
            &format!(r#","env":{{"BIG":"{long_key}"}}"#),
            &["env.BIG", "at most 131071 bytes"],
        ),
        // secrets and profile
        policy(
            "secret not allowed",
            r#","secrets":["deploy-key"]"#,
            &["secrets.deploy-key", "not allowed"],
        ),
        policy("secret twice", r#","secrets":["a","a"]"#, &["secrets.a"]),
        schema(
            "secrets a string",
            job(r#","secrets":"a""#),
            &["secrets", "invalid type"],
        ),
        policy("profile unknown", r#","profile":"gpu""#, &["profile"]),
        policy("profile empty", r#","profile":"""#, &["profile"]),
        schema(
            "profile a number",
            job(r#","profile":5"#),
            &["profile", "invalid type"],
        ),
    ]
}

/// `timeout_secs` and `resources`: types, floors and the profile's caps.
fn timeout_and_resources() -> Vec<Case> {
    vec![
        policy("timeout zero", r#","timeout_secs":0"#, &["timeout_secs"]),
        policy(
            "timeout past 12 hours",
            r#","timeout_secs":41401"#,
            &["timeout_secs", "12 hours"],
        ),
        schema(
            "timeout negative",
            job(r#","timeout_secs":-1"#),
            &["timeout_secs"],
        ),
        schema(
            "timeout fractional",
            job(r#","timeout_secs":1.5"#),
            &["timeout_secs", "invalid type"],
        ),
        schema(
            "timeout as text",
            job(r#","timeout_secs":"10""#),
            &["timeout_secs", "invalid type"],
        ),
        schema(
            "timeout overflowing",
            job(r#","timeout_secs":99999999999999999999999"#),
            &["timeout_secs"],
        ),
        // resources
        policy(
            "memory below the floor",
            r#","resources":{"memory_mb":5}"#,
            &["resources.memory_mb"],
        ),
        policy(
            "memory over the cap",
            r#","resources":{"memory_mb":99999}"#,
            &["resources.memory_mb", "cap"],
        ),
        policy(
            "cpus that would be no limit",
            r#","resources":{"cpus":1e-10}"#,
            &["resources.cpus"],
        ),
        policy(
            "cpus negative",
            r#","resources":{"cpus":-1}"#,
            &["resources.cpus"],
        ),
        policy(
            "cpus over the cap",
            r#","resources":{"cpus":1000}"#,
            &["resources.cpus"],
        ),
        policy(
            "pids zero",
            r#","resources":{"pids":0}"#,
            &["resources.pids"],
        ),
        schema(
            "resources an array",
            job(r#","resources":[4096]"#),
            &["resources: must be an object"],
        ),
        schema(
            "input an array",
            job(r#","inputs":[["s3://b/k"]]"#),
            &["inputs[0]: must be an object"],
        ),
    ]
}

/// `workdir`, `artifacts` and `inputs`: paths out of the workdir, types.
fn workdir_artifacts_and_inputs() -> Vec<Case> {
    vec![
        policy(
            "workdir relative",
            r#","workdir":"work""#,
            &["workdir", "absolute"],
        ),
        policy(
            "workdir the root",
            r#","workdir":"/""#,
            &["workdir", "root"],
        ),
        policy(
            "workdir under /proc",
            r#","workdir":"/proc/self""#,
            &["workdir", "reserved"],
        ),
        policy(
            "workdir with ..",
            r#","workdir":"/a/../b""#,
            &["workdir", "normalised"],
        ),
        policy("workdir with a colon", r#","workdir":"/a:b""#, &["workdir"]),
        policy(
            "workdir on the secrets",
            r#","workdir":"/run/secrets""#,
            &["workdir", "reserved"],
        ),
        // artifacts and inputs
        policy(
            "artifact absolute",
            r#","artifacts":["/etc/passwd"]"#,
            &["artifacts[0]", "not absolute"],
        ),
        policy(
            "artifact escaping",
            r#","artifacts":["a/../../x"]"#,
            &["artifacts[0]", ".."],
        ),
        policy("artifact empty", r#","artifacts":[""]"#, &["artifacts[0]"]),
        schema(
            "artifact a number",
            job(r#","artifacts":[1]"#),
            &["artifacts", "invalid type"],
        ),
        policy(
            "input from an unknown bucket",
            r#","inputs":[{"source":"s3://elsewhere/x.tar.gz"}]"#,
            &["inputs[0].source", "input_buckets"],
        ),
        policy(
            "input not from S3",
            r#","inputs":[{"source":"https://example.com/x.tar.gz"}]"#,
            &["inputs[0].source", "s3://"],
        ),
        schema(
            "input unknown field",
            job(r#","inputs":[{"source":"s3://b/k","mode":"777"}]"#),
            &["unknown field `mode`"],
        ),
        schema(
            "input extract as text",
            job(r#","inputs":[{"source":"s3://b/k","extract":"yes"}]"#),
            &["extract", "invalid type"],
        ),
    ]
}

/// Edges that are fine: they run.
fn edges_that_run() -> Vec<Case> {
    vec![
        runs(
            "id of 128 characters",
            job("").replace("{ID}", "{ID}-{PAD}"),
        ),
        runs("the least CPU", job(r#","resources":{"cpus":0.01}"#)),
        runs("the longest timeout", job(r#","timeout_secs":41400"#)),
        runs(
            "unicode in a value",
            job(r#","env":{"GREETING":"h\u00e9llo \ud83d\udc4b"}"#),
        ),
        runs("a workdir of its own", job(r#","workdir":"/build/src""#)),
    ]
}
