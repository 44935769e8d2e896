//! The commands other than `run` (which is [`crate::agent::run`]): `exec`, `submit`,
//! `cancel`, `logs`, `artifacts`, `check` and `seal`.

pub mod artifacts;
pub mod cancel;
pub mod check;
pub mod exec;
pub mod logs;
pub mod seal;
pub mod submit;
