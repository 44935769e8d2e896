//! The S3 keys of the record, as docs/interface.md ("Where results go") lays
//! them out under the default `results.prefix`: the one place tests spell them.

/// The default `results.prefix`.
pub const PREFIX: &str = "results/";

/// Everything of one job.
pub fn job(id: &str) -> String {
    format!("{PREFIX}{id}/")
}

pub fn result(id: &str) -> String {
    format!("{PREFIX}{id}/result.json")
}

pub fn log(id: &str) -> String {
    format!("{PREFIX}{id}/log.txt")
}

pub fn attempt(id: &str, n: u32) -> String {
    format!("{PREFIX}{id}/attempt-{n}/result.json")
}

pub fn attempt_log(id: &str, n: u32) -> String {
    format!("{PREFIX}{id}/attempt-{n}/log.txt")
}

pub fn claim(id: &str) -> String {
    format!("{PREFIX}{id}/claim.json")
}
