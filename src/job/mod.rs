//! One job: its message ([`spec`]), the image policy ([`image`]), its life in one
//! container ([`runner`]), its output ([`log`], masked by [`mask`]) and its
//! recorded [`result`].

pub mod image;
pub mod log;
pub mod mask;
pub mod result;
pub mod runner;
pub mod spec;

pub use spec::{Job, Problem, Rejection};
