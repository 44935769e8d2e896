//! A job against the pool's sealed bundle: the profile may allow a secret the
//! pool was sealed without.

use super::{Job, Problem, Rejection};
use crate::host::secrets::Secrets;

impl Job {
    /// A rejection when the job asks for a secret the bundle does not have (the
    /// profile allows it, but the pool was sealed without it).
    pub fn check_bundle(&self, bundle: &Secrets) -> Result<(), Rejection> {
        let missing: Vec<Problem> = self
            .secrets
            .iter()
            .filter(|name| bundle.get(name).is_none())
            .map(|name| Problem {
                field: format!("secrets.{name}"),
                rule: "not in the pool's secret bundle".into(),
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Rejection {
                id: Some(self.id.clone()),
                problems: missing,
            })
        }
    }
}
