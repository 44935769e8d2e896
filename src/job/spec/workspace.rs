//! What a job puts in its workspace before it starts: its `inputs` and its
//! `source`, each checked against its profile.

use super::{JobSpec, NamedProfile, Problems};
use crate::job::inputs::{Input, MAX_INPUTS};
use crate::job::source::Source;

impl JobSpec {
    /// At most 16 inputs, each from a bucket the profile allows, each landing
    /// inside the workdir.
    pub(super) fn inputs(&self, named: &NamedProfile<'_>, problems: &mut Problems) -> Vec<Input> {
        if self.inputs.len() > MAX_INPUTS {
            problems.push(
                "inputs",
                format!("{} inputs; at most {MAX_INPUTS}", self.inputs.len()),
            );
            return Vec::new();
        }
        let buckets = &named.profile.input_buckets;
        let mut inputs = Vec::new();
        for (i, spec) in self.inputs.iter().enumerate() {
            match spec.check(buckets, named.name) {
                Ok(input) => inputs.push(input),
                Err(broken) => {
                    for (field, rule) in broken {
                        problems.push(&format!("inputs[{i}].{field}"), rule);
                    }
                }
            }
        }
        inputs
    }

    /// A repository under one of the profile's `git_remotes`, and one commit.
    pub(super) fn source(
        &self,
        named: &NamedProfile<'_>,
        problems: &mut Problems,
    ) -> Option<Source> {
        let spec = self.source.as_ref()?;
        spec.check(&named.profile.git, named.name)
            .map_err(|broken| {
                for (field, rule) in broken {
                    problems.push(&format!("source.{field}"), rule);
                }
            })
            .ok()
    }
}
