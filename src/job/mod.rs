//! One job: its message ([`spec`]) and image policy ([`image`]), the container
//! it runs in ([`container`]) and that container's life ([`runner`], reading
//! [`output`] into its [`log`], masked by [`mask`]), what became of it
//! ([`outcome`]) and its recorded [`result`]; [`sweep`] removes what jobs leave;
//! [`inputs`] places the S3 objects it names in its workspace, [`source`] checks out the git commit it names, [`artifacts`] reads the files a job names out of its container; [`build`] checks the image it builds; [`cancel`] carries a cancel request to the runner; [`live`] holds the output
//! not yet uploaded for followers; [`usage`] meters its container's CPU and memory.

pub mod admission;
pub mod artifacts;
pub mod attempts;
pub mod build;
pub mod caches;
pub mod cancel;
pub mod container;
pub mod inputs;
pub mod live;
pub mod log;
#[cfg(test)]
mod masking_properties;
pub mod outcome;
pub mod output;
pub mod result;
pub mod runner;
pub mod source;
pub mod spec;
pub mod status;
pub mod sweep;
pub mod usage;

pub use spec::{Job, Problem, Rejection};
