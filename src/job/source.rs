//! Sources in from git: a job's `source` names a repository and a commit (or a
//! branch or tag, resolved on the host); the commit is checked out into its
//! workspace before its container starts, from the host's mirror of the
//! repository ([`crate::host::git`]) as a self-contained repository. The
//! repository is hostile input: no hook runs, no local or `ext` transport, its
//! submodules come only from the profile's remotes, its size is capped.

use serde::{Deserialize, Serialize};

use crate::config::ProfileGit;
pub use crate::host::git::Want;
use crate::rules::git::{check_ref_name, check_remote_url, parse_sha, remote_allowed};

mod checkout;
pub use checkout::{SourceError, place};

/// The most history a job may ask for by `depth`.
pub const MAX_DEPTH: u32 = 1_000_000;

/// The wire form of `source`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub repo: String,
    /// A branch or tag (`main`, `v1.2`, `refs/heads/main`); resolved on the host.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// A commit, 40 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// That many commits of history; default: all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Check out its submodules too (one level), each from the profile's remotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submodules: Option<bool>,
}

/// A `source` that passed every rule, with what the profile says of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub repo: String,
    pub want: Want,
    pub depth: Option<u32>,
    pub submodules: bool,
    /// The profile's remotes (for the submodules) and credentials.
    pub git: ProfileGit,
    /// The profile's `source_max_mb`, in bytes.
    pub max_bytes: u64,
}

impl SourceSpec {
    /// The source, or each broken rule with the name of its field within it.
    pub fn check(
        &self,
        git: &ProfileGit,
        profile: &str,
    ) -> Result<Source, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if let Err(rule) = check_remote_url(&self.repo) {
            problems.push(("repo", rule));
        } else if !remote_allowed(&self.repo, &git.remotes) {
            problems.push((
                "repo",
                format!("does not start with one of profile {profile:?}'s git_remotes"),
            ));
        }
        let want = match (&self.reference, &self.sha) {
            (Some(_), Some(_)) | (None, None) => {
                problems.push((
                    "ref",
                    "name exactly one of source.ref and source.sha".into(),
                ));
                None
            }
            (Some(name), None) => match check_ref_name(name) {
                Ok(()) => Some(Want::Ref(name.clone())),
                Err(rule) => {
                    problems.push(("ref", format!("not a branch or tag name: {rule}")));
                    None
                }
            },
            (None, Some(sha)) => match parse_sha(sha) {
                Some(sha) => Some(Want::Sha(sha)),
                None => {
                    problems.push(("sha", "must be a commit id, 40 hex digits".into()));
                    None
                }
            },
        };
        if let Some(depth) = self.depth
            && !(1..=MAX_DEPTH).contains(&depth)
        {
            problems.push((
                "depth",
                format!("{depth} is out of range (1 to {MAX_DEPTH})"),
            ));
        }
        match want {
            Some(want) if problems.is_empty() => Ok(Source {
                repo: self.repo.clone(),
                want,
                depth: self.depth,
                submodules: self.submodules.unwrap_or(false),
                git: git.clone(),
                max_bytes: git.source_max_mb.saturating_mul(1_000_000),
            }),
            _ => Err(problems),
        }
    }
}

/// What the result records of a checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    pub repo: String,
    pub sha: String,
    /// The branch or tag the job named, as resolved (`refs/heads/main`).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `hit` (the mirror was warm), `seeded` (its first use after a boot
    /// seed), `cold` (cloned from the remote for this job).
    pub mirror: String,
    /// Time spent fetching into the mirror (0: the commit was there).
    pub fetch_ms: u64,
    /// Time spent making the job's repository and its files.
    pub checkout_ms: u64,
    /// What the checkout weighs: its `.git` and its files.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(repo: &str, reference: Option<&str>, sha: Option<&str>) -> SourceSpec {
        SourceSpec {
            repo: repo.into(),
            reference: reference.map(Into::into),
            sha: sha.map(Into::into),
            depth: None,
            submodules: None,
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        let git = ProfileGit {
            remotes: vec!["https://git.example.com/org/".into()],
            source_max_mb: 1,
            ..Default::default()
        };
        let ok = spec("https://git.example.com/org/r.git", Some("main"), None)
            .check(&git, "default")
            .unwrap();
        assert_eq!(ok.want, Want::Ref("main".into()));
        assert_eq!(ok.max_bytes, 1_000_000);
        let sha = "A".repeat(40);
        let ok = spec("https://git.example.com/org/r.git", None, Some(&sha))
            .check(&git, "default")
            .unwrap();
        assert_eq!(ok.want, Want::Sha("a".repeat(40)));
        let problems = spec("https://elsewhere.example/r.git", Some("a..b"), None)
            .check(&git, "default")
            .unwrap_err();
        assert_eq!(problems[0].0, "repo");
        assert!(problems[0].1.contains("profile \"default\"'s git_remotes"));
        assert_eq!(problems[1].0, "ref");
        let problems = spec("file:///etc", None, Some("abc"))
            .check(&git, "default")
            .unwrap_err();
        assert!(problems[0].1.contains("https://"), "{problems:?}");
        assert_eq!(problems[1].0, "sha");
        let both = spec("https://git.example.com/org/r.git", Some("m"), Some(&sha));
        assert!(
            both.check(&git, "d").unwrap_err()[0]
                .1
                .contains("exactly one")
        );
        let mut deep = spec("https://git.example.com/org/r.git", Some("m"), None);
        deep.depth = Some(0);
        assert_eq!(deep.check(&git, "d").unwrap_err()[0].0, "depth");
    }
}
